package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/control/inventory"
)

// GsonTime formats times as ZStack's Gson does: "Nov 14, 2017 10:20:57 PM".
const GsonTime = "Jan 2, 2006 3:04:05 PM"

func gson(t time.Time) string { return t.Local().Format(GsonTime) }

// SessionTTL is how long a ZStack session lives.
const SessionTTL = 7200 * time.Second

type sessionInventory struct {
	UUID        string `json:"uuid"`
	AccountUUID string `json:"accountUuid"`
	UserUUID    string `json:"userUuid"`
	ExpiredDate string `json:"expiredDate"`
	CreateDate  string `json:"createDate"`
}

// logIn is LogInByAccount (PUT /accounts/login).
func (a *API) logIn(ctx context.Context, c *apiCall) (any, error) {
	var body struct {
		LogInByAccount *struct {
			AccountName string `json:"accountName"`
			Password    string `json:"password"`
		} `json:"logInByAccount"`
	}
	if err := c.Params(&body); err != nil {
		return nil, err
	}
	if body.LogInByAccount == nil {
		return nil, errInvalid("the body needs logInByAccount")
	}
	in := body.LogInByAccount
	g := a.loginGuard()
	src := sourceOf(c.r.RemoteAddr)
	if w := g.wait(src, in.AccountName); w > 0 {
		a.Metrics.loginFailed("throttled")
		secs := int(w.Round(time.Second) / time.Second)
		if secs < 1 {
			secs = 1
		}
		c.w.Header().Set("Retry-After", strconv.Itoa(secs))
		return nil, &ErrorCode{Code: CodeAuthFailed, Description: "authentication failed",
			Details: fmt.Sprintf("too many failed logins; try again in %d s", secs)}
	}
	s, err := a.DB.LogIn(ctx, in.AccountName, strings.ToLower(in.Password), chunkstore.NewID(), SessionTTL)
	if errors.Is(err, inventory.ErrAuthFailed) {
		g.failed(src, in.AccountName)
		a.Metrics.loginFailed("password")
		// The password is never logged, not even hashed.
		a.log().Info("login refused", "account", in.AccountName, "remote", c.r.RemoteAddr)
		return nil, &ErrorCode{Code: CodeAuthFailed, Description: "authentication failed", Details: "wrong account name or password"}
	}
	if err != nil {
		return nil, err
	}
	g.succeeded(src, in.AccountName)
	return map[string]any{"inventory": sessionInventory{
		UUID: s.UUID, AccountUUID: s.AccountUUID, UserUUID: s.UserUUID,
		ExpiredDate: gson(s.Expires), CreateDate: gson(s.Created),
	}}, nil
}

func (a *API) loginGuard() *loginGuard {
	a.guardOnce.Do(func() { a.guard = newLoginGuard(nil) })
	return a.guard
}

// logOut is LogOut (DELETE /accounts/sessions/{uuid}).
func (a *API) logOut(ctx context.Context, c *apiCall) (any, error) {
	return map[string]any{}, a.DB.LogOut(ctx, c.Path("uuid"))
}

// validateSession is ValidateSession (GET /accounts/sessions/{uuid}/valid).
func (a *API) validateSession(ctx context.Context, c *apiCall) (any, error) {
	_, err := a.DB.ValidSession(ctx, c.Path("uuid"))
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		return nil, err
	}
	return map[string]bool{"valid": err == nil}, nil
}

// pollJob answers an async job's location, with no session needed: 202 {}
// while it runs (with a progress field ZStack clients ignore), 200 and its
// result when done, 503 and its error when failed, 404 "the job has been
// expired" when unknown or older than JobRetention.
func (a *API) pollJob(ctx context.Context, c *apiCall) (any, error) {
	id := c.Path("uuid")
	j, err := a.DB.GetJob(ctx, id)
	if errors.Is(err, inventory.ErrNotFound) {
		// ZStack's answer for a job it does not know or no longer keeps.
		return textReply(http.StatusNotFound, "the job has been expired"), nil
	}
	if err != nil {
		return nil, err
	}
	switch j.State {
	case inventory.JobRunning:
		body := map[string]any{}
		if a.Jobs != nil {
			if p := a.Jobs.Progress(j.UUID); p != nil {
				body["progress"] = map[string]int64{"done": p.Done(), "total": p.Total()}
			}
		}
		return jsonReply(http.StatusAccepted, body), nil
	case inventory.JobSucceeded:
		return rawReply{status: http.StatusOK, body: j.Result}, nil
	default:
		return rawReply{status: http.StatusServiceUnavailable, body: j.Error}, nil
	}
}
