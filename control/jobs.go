package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

// Jobs runs ZStack's asynchronous APIs: the request is answered at once
// with 202 and the job's location, the work runs in the background, its
// outcome is recorded in the inventory for polling (kept 3 hours) and, if
// the client asked with X-Web-Hook, POSTed to it.
type Jobs struct {
	DB     *inventory.DB
	Log    *slog.Logger
	Client *http.Client // for web hooks; nil means a client with a 10 s timeout
	// HookRetries is how many times a web hook is tried; 0 means 5.
	HookRetries int
	// HookBackoff is the first retry's delay, doubled each time; 0 means 1 s.
	HookBackoff time.Duration
	// Metrics, if set, counts running jobs.
	Metrics *Metrics

	once     sync.Once
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	progress map[string]*dataplane.Progress
}

// JobFunc does a job's work. It returns the body a finished job answers
// with (for example {"inventory": ...}) or an error code.
type JobFunc func(ctx context.Context, p *dataplane.Progress) (any, *ErrorCode)

// JobRetention is how long finished jobs can be polled.
const JobRetention = 3 * time.Hour

func (j *Jobs) init() {
	j.once.Do(func() {
		j.ctx, j.cancel = context.WithCancel(context.Background())
		j.progress = make(map[string]*dataplane.Progress)
	})
}

// JobTicket is a validated async request, ready to launch.
type JobTicket struct {
	id, hook string
}

// Accept validates the request's job headers (X-Job-UUID: 32 lowercase
// hex digits, not in use; X-Web-Hook: an http(s) URL) and answers 400 if
// they are wrong. Nothing is recorded yet, so a caller may still refuse
// the request for its own reasons.
func (j *Jobs) Accept(w http.ResponseWriter, r *http.Request) (*JobTicket, bool) {
	j.init()
	t := &JobTicket{id: r.Header.Get("X-Job-UUID"), hook: r.Header.Get("X-Web-Hook")}
	if t.id == "" {
		t.id = chunkstore.NewID()
	} else if chunkstore.ValidID(t.id) != nil {
		badRequest(w, "X-Job-UUID must be 32 lowercase hex digits")
		return nil, false
	}
	if t.hook != "" {
		if u, err := url.Parse(t.hook); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			badRequest(w, "X-Web-Hook must be an http or https URL")
			return nil, false
		}
	}
	if _, err := j.DB.GetJob(r.Context(), t.id); err == nil {
		badRequest(w, "X-Job-UUID "+t.id+" is already in use")
		return nil, false
	}
	return t, true
}

// Start is Accept then Launch.
func (j *Jobs) Start(w http.ResponseWriter, r *http.Request, api string, fn JobFunc) bool {
	t, ok := j.Accept(w, r)
	if !ok {
		return false
	}
	return j.Launch(w, r, t, api, fn)
}

// Launch records the job, answers 202 with its location and runs fn in
// the background. It returns false (having answered) if the job could not
// be recorded, for example because a concurrent request took its id.
func (j *Jobs) Launch(w http.ResponseWriter, r *http.Request, t *JobTicket, api string, fn JobFunc) bool {
	j.init()
	id, hook := t.id, t.hook
	if err := j.DB.CreateJob(r.Context(), id, api, hook); err != nil {
		if _, gerr := j.DB.GetJob(r.Context(), id); gerr == nil {
			badRequest(w, "X-Job-UUID "+id+" is already in use")
			return false
		}
		writeZJSON(w, http.StatusServiceUnavailable, map[string]*ErrorCode{"error": apiErr(CodeInternal, "internal error", err.Error())})
		return false
	}
	p := &dataplane.Progress{}
	j.mu.Lock()
	j.progress[id] = p
	j.mu.Unlock()
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	writeZJSON(w, http.StatusAccepted, map[string]string{"location": fmt.Sprintf("%s://%s/zstack/v1/api-jobs/%s", scheme, r.Host, id)})

	j.wg.Add(1)
	j.Metrics.jobStarted()
	go func() {
		defer j.wg.Done()
		defer j.Metrics.jobEnded()
		result, ecode := fn(j.ctx, p)
		if ecode == nil && j.ctx.Err() != nil {
			ecode = apiErr(CodeOperationFail, "operation failed", "the daemon is shutting down")
		}
		var resBody, errBody []byte
		if ecode != nil {
			errBody, _ = json.Marshal(map[string]*ErrorCode{"error": ecode})
		} else {
			if result == nil {
				result = map[string]any{}
			}
			resBody, _ = json.Marshal(result)
		}
		// Record with a fresh context: a shutdown must still record
		// how the job ended.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := j.DB.FinishJob(ctx, id, resBody, errBody); err != nil {
			j.log().Error("recording job", "job", id, "err", err)
		}
		j.mu.Lock()
		delete(j.progress, id)
		j.mu.Unlock()
		if hook != "" {
			body := resBody
			if ecode != nil {
				body = errBody
			}
			j.callHook(hook, id, ecode == nil, body)
		}
	}()
	return true
}

// Progress returns a running job's progress, or nil.
func (j *Jobs) Progress(id string) *dataplane.Progress {
	j.init()
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.progress[id]
}

// Close cancels running jobs and waits for them to be recorded.
func (j *Jobs) Close() {
	j.init()
	j.cancel()
	j.wg.Wait()
}

func (j *Jobs) log() *slog.Logger {
	if j.Log != nil {
		return j.Log
	}
	return slog.Default()
}

// callHook POSTs a finished job's body to its web hook, retrying with
// doubling delays on errors and non-2xx answers.
func (j *Jobs) callHook(hook, id string, success bool, body []byte) {
	client := j.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	tries := j.HookRetries
	if tries <= 0 {
		tries = 5
	}
	delay := j.HookBackoff
	if delay <= 0 {
		delay = time.Second
	}
	var last error
	for i := 0; i < tries; i++ {
		if i > 0 {
			select {
			case <-time.After(delay):
			case <-j.ctx.Done():
				return
			}
			delay *= 2
		}
		req, err := http.NewRequest(http.MethodPost, hook, bytes.NewReader(body))
		if err != nil {
			last = err
			break
		}
		req.Header.Set("Content-Type", "application/json;charset=UTF-8")
		req.Header.Set("X-Job-UUID", id)
		req.Header.Set("X-Job-Success", fmt.Sprint(success))
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return
			}
			err = errors.New(resp.Status)
		}
		last = err
	}
	j.log().Warn("web hook failed", "job", id, "hook", hook, "err", last)
}
