// Package apitest is a client of volback's ZStack-compatible API for
// tests: plain HTTP requests as a ZStack client sends them, and the
// polling of async jobs. Package control's handler tests and the daemon's
// end-to-end tests share it.
package apitest

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/volback/volback/control/inventory"
)

// Client talks to one API.
type Client struct {
	T testing.TB
	// Base is the API's root, http://HOST:PORT/zstack/v1.
	Base string
	// Session is the session uuid Job sends; Login sets it.
	Session string
	// HTTP sends the requests; nil means http.DefaultClient.
	HTTP *http.Client
}

// Reply is an HTTP answer.
type Reply struct {
	Status int
	Body   []byte
}

// JSON decodes the body as a JSON object.
func (r Reply) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("reply %d %q is not a JSON object: %v", r.Status, r.Body, err)
	}
	return m
}

// Do sends one request. path is below Base, or a whole URL (a job's
// location); auth is the Authorization header ("" for none).
func (c *Client) Do(method, path, auth, body string, headers map[string]string) Reply {
	c.T.Helper()
	url := path
	if !strings.HasPrefix(path, "http://") && !strings.HasPrefix(path, "https://") {
		url = c.Base + path
	}
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		c.T.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json;charset=UTF-8")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for k, v := range headers {
		if k == "Host" {
			req.Host = v // Go sends the Host header from here only
			continue
		}
		req.Header.Set(k, v)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		c.T.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return Reply{resp.StatusCode, b}
}

// Login logs in as admin and keeps the session.
func (c *Client) Login(password string) {
	c.T.Helper()
	r := c.LoginReply(password)
	if r.Status != http.StatusOK {
		c.T.Fatalf("login: %d %s", r.Status, r.Body)
	}
	c.Session = r.JSON(c.T)["inventory"].(map[string]any)["uuid"].(string)
}

// LoginReply sends LogInByAccount as admin and returns the answer.
func (c *Client) LoginReply(password string) Reply {
	c.T.Helper()
	return c.Do("PUT", "/accounts/login", "", `{"logInByAccount":{"accountName":"admin","password":"`+inventory.HashPassword(password)+`"}}`, nil)
}

// Job sends an async call with the session and, if it was accepted, polls
// its location until it ends.
func (c *Client) Job(method, path, body string, headers map[string]string) Reply {
	c.T.Helper()
	r := c.Do(method, path, "OAuth "+c.Session, body, headers)
	if r.Status != http.StatusAccepted {
		return r
	}
	return c.Wait(r.JSON(c.T)["location"].(string))
}

// Wait polls a job's location until it is no longer running (202), for at
// most two minutes.
func (c *Client) Wait(location string) Reply {
	c.T.Helper()
	for deadline := time.Now().Add(2 * time.Minute); ; {
		r := c.Do("GET", location, "OAuth "+c.Session, "", nil)
		if r.Status != http.StatusAccepted {
			return r
		}
		if time.Now().After(deadline) {
			c.T.Fatalf("job %s still running after two minutes", location)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
