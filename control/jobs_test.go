package control

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volback/volback/dataplane"
)

// jobsHarness serves the real API plus one async test route, POST
// /zstack/v1/test-jobs, whose work the test controls.
func jobsHarness(t *testing.T) (srv *httptest.Server, session string, jobs *Jobs, release chan *ErrorCode) {
	t.Helper()
	apiSrv, db, _ := newTestAPI(t)
	apiSrv.Close()
	jobs = &Jobs{DB: db, HookBackoff: 10 * time.Millisecond}
	api := &API{DB: db, Jobs: jobs}
	release = make(chan *ErrorCode, 10)
	mux := http.NewServeMux()
	mux.Handle("/zstack/v1/", api.Handler())
	job := func(ctx context.Context, p *dataplane.Progress) (any, error) {
		p.SetTotal(100)
		p.Add(40)
		select {
		case e := <-release:
			if e != nil {
				return nil, e
			}
			return map[string]any{"inventory": map[string]string{"uuid": "done"}}, nil
		case <-ctx.Done():
			return nil, errRefused("cancelled", "")
		}
	}
	mux.Handle("POST /zstack/v1/test-jobs", api.serve(false, func(*apiCall) (endpoint, error) {
		return endpoint{api: "TestJob", async: func(context.Context, *apiCall) (JobFunc, error) { return job, nil }}, nil
	}))
	srv = httptest.NewServer(mux)
	t.Cleanup(func() { jobs.Close(); srv.Close() })
	session = "OAuth " + login(t, srv.URL, "password").json(t)["inventory"].(map[string]any)["uuid"].(string)
	return srv, session, jobs, release
}

func startJob(t *testing.T, srv *httptest.Server, session string, headers map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", srv.URL+"/zstack/v1/test-jobs", strings.NewReader(`{"params":{}}`))
	req.Header.Set("Authorization", session)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]string
	json.Unmarshal(b, &m)
	return resp.StatusCode, m["location"]
}

func poll(t *testing.T, loc, session string) httpResult {
	t.Helper()
	return call(t, "GET", loc, session, "")
}

func waitDone(t *testing.T, loc, session string) httpResult {
	t.Helper()
	for i := 0; i < 500; i++ {
		if r := poll(t, loc, session); r.status != 202 {
			return r
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("job never finished")
	return httpResult{}
}

func TestAsyncJobs(t *testing.T) {
	srv, session, _, release := jobsHarness(t)

	status, loc := startJob(t, srv, session, nil)
	if status != 202 || !strings.Contains(loc, "/zstack/v1/api-jobs/") {
		t.Fatalf("start: %d %q", status, loc)
	}
	r := poll(t, loc, session)
	prog, _ := r.json(t)["progress"].(map[string]any)
	if r.status != 202 || prog["done"] != float64(40) || prog["total"] != float64(100) {
		t.Fatalf("running job: %d %s", r.status, r.body)
	}
	release <- nil
	if r := waitDone(t, loc, session); r.status != 200 || r.json(t)["inventory"] == nil {
		t.Fatalf("finished job: %d %s", r.status, r.body)
	}

	// A failing job answers 503 with its error.
	_, loc2 := startJob(t, srv, session, nil)
	release <- errRefused("backup failed", "target vanished")
	if r := waitDone(t, loc2, session); r.status != 503 || errCode(t, r) != CodeOperationFail {
		t.Fatalf("failed job: %d %s", r.status, r.body)
	}

	// X-Job-UUID sets the id; a duplicate or malformed one is refused.
	id := "0123456789abcdef0123456789abcdef"
	status, loc3 := startJob(t, srv, session, map[string]string{"X-Job-UUID": id})
	if status != 202 || !strings.HasSuffix(loc3, "/"+id) {
		t.Fatalf("X-Job-UUID: %d %q", status, loc3)
	}
	if status, _ := startJob(t, srv, session, map[string]string{"X-Job-UUID": id}); status != 400 {
		t.Fatalf("duplicate X-Job-UUID: %d", status)
	}
	for _, bad := range []string{"123", "0123456789ABCDEF0123456789ABCDEF", "0123456789abcdef0123456789abcdeg"} {
		if status, _ := startJob(t, srv, session, map[string]string{"X-Job-UUID": bad}); status != 400 {
			t.Fatalf("malformed X-Job-UUID %q: %d", bad, status)
		}
	}
	release <- nil
	waitDone(t, loc3, session)
	if status, _ := startJob(t, srv, session, map[string]string{"X-Web-Hook": "ftp://x"}); status != 400 {
		t.Fatalf("bad X-Web-Hook: %d", status)
	}
}

func TestWebHookRetries(t *testing.T) {
	srv, session, _, release := jobsHarness(t)
	var mu sync.Mutex
	var calls []http.Header
	var bodies []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		calls = append(calls, r.Header.Clone())
		bodies = append(bodies, string(b))
		n := len(calls)
		mu.Unlock()
		if n < 3 {
			w.WriteHeader(500) // the first two deliveries fail
		}
	}))
	defer hook.Close()
	_, loc := startJob(t, srv, session, map[string]string{"X-Web-Hook": hook.URL})
	release <- nil
	final := waitDone(t, loc, session)
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(calls)
		mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 3 {
		t.Fatalf("web hook called %d times, want 3 (two failures, then success)", len(calls))
	}
	id := loc[strings.LastIndex(loc, "/")+1:]
	for i, h := range calls {
		if h.Get("X-Job-UUID") != id || h.Get("X-Job-Success") != "true" {
			t.Fatalf("call %d headers %v", i, h)
		}
	}
	if strings.TrimSpace(bodies[2]) != strings.TrimSpace(string(final.body)) {
		t.Fatalf("hook body %q, poll body %q", bodies[2], final.body)
	}
}

func TestJobsCloseRecordsRunningJobsFailed(t *testing.T) {
	srv, session, jobs, _ := jobsHarness(t)
	_, loc := startJob(t, srv, session, nil)
	jobs.Close() // shutdown while the job runs
	if r := poll(t, loc, session); r.status != 503 {
		t.Fatalf("job interrupted by shutdown: %d %s", r.status, r.body)
	}
}
