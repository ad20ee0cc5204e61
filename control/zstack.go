package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
)

// ZStack error codes the API answers with.
const (
	CodeInternal       = "SYS.1000"
	CodeTimeout        = "SYS.1001"
	CodeNotFound       = "SYS.1003"
	CodeOperationFail  = "SYS.1006"
	CodeInvalidArg     = "SYS.1007"
	CodeAuthFailed     = "ID.1000"
	CodeInvalidSession = "ID.1001"
)

// ErrorCode is ZStack's error body: {"error": {...}}, nulls omitted.
type ErrorCode struct {
	Code        string     `json:"code"`
	Description string     `json:"description,omitempty"`
	Details     string     `json:"details,omitempty"`
	Cause       *ErrorCode `json:"cause,omitempty"`
}

func (e *ErrorCode) Error() string {
	if e.Details != "" {
		return e.Code + ": " + e.Description + ": " + e.Details
	}
	return e.Code + ": " + e.Description
}

// apiErr builds an ErrorCode.
func apiErr(code, description, details string) *ErrorCode {
	return &ErrorCode{Code: code, Description: description, Details: details}
}

// GsonTime formats times as ZStack's Gson does: "Nov 14, 2017 10:20:57 PM".
const GsonTime = "Jan 2, 2006 3:04:05 PM"

// SessionTTL is how long a ZStack session lives.
const SessionTTL = 7200 * time.Second

// API serves ZStack's REST API under /zstack/v1.
type API struct {
	DB      *inventory.DB
	Jobs    *Jobs
	Host    *Host
	Metrics *Metrics
	Log     *slog.Logger
	// TargetEnv holds the daemon's S3 credentials, if configured.
	TargetEnv target.Env
	mux       *http.ServeMux
	exports   *backupExports
}

// Handler returns the API's routes.
func (a *API) Handler() http.Handler {
	if a.mux != nil {
		return a.mux
	}
	m := http.NewServeMux()
	m.HandleFunc("PUT /zstack/v1/accounts/login", a.logIn)
	m.HandleFunc("DELETE /zstack/v1/accounts/sessions/{uuid}", a.logOut)
	m.HandleFunc("GET /zstack/v1/accounts/sessions/{uuid}/valid", a.validateSession)
	m.Handle("GET /zstack/v1/api-jobs/{uuid}", a.authed(a.pollJob))
	if a.Metrics != nil {
		m.Handle("GET /metrics", a.Metrics.Handler())
	}
	if a.Host != nil && a.Jobs != nil {
		m.Handle("POST /zstack/v1/backup-storage/image-store", a.authed(a.addImageStore))
		m.Handle("GET /zstack/v1/backup-storage", a.authed(a.queryStorages))
		m.Handle("GET /zstack/v1/backup-storage/{uuid}", a.authed(a.queryStorages))
		m.Handle("DELETE /zstack/v1/backup-storage/{uuid}", a.authed(a.deleteBackupStorage))
		m.Handle("PUT /zstack/v1/backup-storage/image-store/{uuid}/actions", a.authed(a.reclaimSpace))
		m.Handle("GET /zstack/v1/user-tags", a.authed(a.queryUserTags))
		m.Handle("GET /zstack/v1/user-tags/{uuid}", a.authed(a.queryUserTags))
		m.Handle("POST /zstack/v1/volumes/data", a.authed(a.createDataVolume))
		m.Handle("GET /zstack/v1/volumes", a.authed(a.queryVolumes))
		m.Handle("GET /zstack/v1/volumes/{uuid}", a.authed(a.queryVolumes))
		m.Handle("DELETE /zstack/v1/volumes/{uuid}", a.authed(a.deleteDataVolume))
		m.Handle("POST /zstack/v1/volumes/{volumeUuid}/volume-backups", a.authed(a.createVolumeBackup))
		m.Handle("GET /zstack/v1/volume-backups", a.authed(a.queryVolumeBackups))
		m.Handle("GET /zstack/v1/volume-backups/{uuid}", a.authed(a.queryVolumeBackups))
		m.Handle("DELETE /zstack/v1/volume-backups/{uuid}", a.authed(a.deleteVolumeBackup))
		m.Handle("PUT /zstack/v1/volume-backups/imageStore/{storageUuid}/actions", a.authed(a.syncVolumeBackups))
		m.Handle("PUT /zstack/v1/volume-backups/{uuid}/actions", a.authed(a.backupActions))
		m.Handle("POST /zstack/v1/volumes/data-volume/from/volume-template/{backupUuid}", a.authed(a.createVolumeFromBackup))
	}
	a.mux = m
	return m
}

func (a *API) log() *slog.Logger {
	if a.Log != nil {
		return a.Log
	}
	return slog.Default()
}

func writeZJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// fail answers an API-level error: 503 with the error body, as ZStack does.
func (a *API) fail(w http.ResponseWriter, e *ErrorCode) {
	a.Metrics.apiError(e.Code)
	writeZJSON(w, http.StatusServiceUnavailable, map[string]*ErrorCode{"error": e})
}

// badRequest answers a request that cannot be parsed at all: 400, plain text.
func badRequest(w http.ResponseWriter, msg string) {
	http.Error(w, msg, http.StatusBadRequest)
}

// decodeBody reads a JSON body of at most 1 MiB into v.
func decodeBody(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20+1))
	if err != nil {
		return err
	}
	if len(b) > 1<<20 {
		return errors.New("body larger than 1 MiB")
	}
	return json.Unmarshal(b, v)
}

type sessionCtxKey struct{}

// authed requires "Authorization: OAuth <session>": a missing or other
// scheme is a malformed request (400); an unknown or expired session is
// ID.1001 (503).
func (a *API) authed(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		scheme, id, ok := strings.Cut(auth, " ")
		if !ok || scheme != "OAuth" || strings.TrimSpace(id) == "" {
			badRequest(w, "the Authorization header must be 'OAuth <session uuid>'")
			return
		}
		s, err := a.DB.ValidSession(r.Context(), strings.TrimSpace(id))
		if errors.Is(err, inventory.ErrNotFound) {
			a.fail(w, apiErr(CodeInvalidSession, "invalid session", "the session is unknown or has expired; log in again"))
			return
		}
		if err != nil {
			a.fail(w, apiErr(CodeInternal, "internal error", err.Error()))
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), sessionCtxKey{}, s)))
	})
}

type sessionInventory struct {
	UUID        string `json:"uuid"`
	AccountUUID string `json:"accountUuid"`
	UserUUID    string `json:"userUuid"`
	ExpiredDate string `json:"expiredDate"`
	CreateDate  string `json:"createDate"`
}

func (a *API) logIn(w http.ResponseWriter, r *http.Request) {
	var body struct {
		LogInByAccount *struct {
			AccountName string `json:"accountName"`
			Password    string `json:"password"`
		} `json:"logInByAccount"`
	}
	if err := decodeBody(r, &body); err != nil {
		badRequest(w, "bad JSON: "+err.Error())
		return
	}
	if body.LogInByAccount == nil {
		a.fail(w, apiErr(CodeInvalidArg, "invalid argument", "the body needs logInByAccount"))
		return
	}
	in := body.LogInByAccount
	s, err := a.DB.LogIn(r.Context(), in.AccountName, strings.ToLower(in.Password), chunkstore.NewID(), SessionTTL)
	if errors.Is(err, inventory.ErrAuthFailed) {
		// The password is never logged, not even hashed.
		a.log().Info("login refused", "account", in.AccountName, "remote", r.RemoteAddr)
		a.fail(w, apiErr(CodeAuthFailed, "authentication failed", "wrong account name or password"))
		return
	}
	if err != nil {
		a.fail(w, apiErr(CodeInternal, "internal error", err.Error()))
		return
	}
	writeZJSON(w, http.StatusOK, map[string]any{"inventory": sessionInventory{
		UUID: s.UUID, AccountUUID: s.AccountUUID, UserUUID: s.UserUUID,
		ExpiredDate: s.Expires.Local().Format(GsonTime), CreateDate: s.Created.Local().Format(GsonTime),
	}})
}

func (a *API) logOut(w http.ResponseWriter, r *http.Request) {
	if err := a.DB.LogOut(r.Context(), r.PathValue("uuid")); err != nil {
		a.fail(w, apiErr(CodeInternal, "internal error", err.Error()))
		return
	}
	writeZJSON(w, http.StatusOK, map[string]any{})
}

func (a *API) validateSession(w http.ResponseWriter, r *http.Request) {
	_, err := a.DB.ValidSession(r.Context(), r.PathValue("uuid"))
	if err != nil && !errors.Is(err, inventory.ErrNotFound) {
		a.fail(w, apiErr(CodeInternal, "internal error", err.Error()))
		return
	}
	writeZJSON(w, http.StatusOK, map[string]bool{"valid": err == nil})
}

// pollJob answers an async job's location: 202 {} while it runs (with a
// progress field ZStack clients ignore), 200 and its result when done, 503
// and its error when failed, 404 when unknown or expired.
func (a *API) pollJob(w http.ResponseWriter, r *http.Request) {
	j, err := a.DB.GetJob(r.Context(), r.PathValue("uuid"))
	if errors.Is(err, inventory.ErrNotFound) {
		writeZJSON(w, http.StatusNotFound, map[string]*ErrorCode{"error": apiErr(CodeNotFound, "job not found", fmt.Sprintf("no job %s (jobs are kept 3 hours)", r.PathValue("uuid")))})
		return
	}
	if err != nil {
		a.fail(w, apiErr(CodeInternal, "internal error", err.Error()))
		return
	}
	switch j.State {
	case inventory.JobRunning:
		body := map[string]any{}
		if a.Jobs != nil {
			if p := a.Jobs.Progress(j.UUID); p != nil {
				body["progress"] = map[string]int64{"done": p.Done(), "total": p.Total()}
			}
		}
		writeZJSON(w, http.StatusAccepted, body)
	case inventory.JobSucceeded:
		w.Header().Set("Content-Type", "application/json;charset=UTF-8")
		w.WriteHeader(http.StatusOK)
		w.Write(j.Result)
	default:
		w.Header().Set("Content-Type", "application/json;charset=UTF-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write(j.Error)
	}
}
