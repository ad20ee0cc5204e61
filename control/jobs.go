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
// with (for example {"inventory": ...}) or an error: an *ErrorCode as it
// is, anything else as SYS.1000.
type JobFunc func(ctx context.Context, p *dataplane.Progress) (any, error)

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
// hex digits, not in use; X-Web-Hook: an http(s) URL); a wrong one is a
// bad request (400). Nothing is recorded yet, so the handler may still
// refuse the request for its own reasons.
func (j *Jobs) Accept(ctx context.Context, r *http.Request) (*JobTicket, error) {
	j.init()
	t := &JobTicket{id: r.Header.Get("X-Job-UUID"), hook: r.Header.Get("X-Web-Hook")}
	if t.id == "" {
		t.id = chunkstore.NewID()
	} else if chunkstore.ValidID(t.id) != nil {
		return nil, badRequestf("X-Job-UUID must be 32 lowercase hex digits")
	}
	if t.hook != "" {
		if u, err := url.Parse(t.hook); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, badRequestf("X-Web-Hook must be an http or https URL")
		}
	}
	if _, err := j.DB.GetJob(ctx, t.id); err == nil {
		return nil, badRequestf("X-Job-UUID %s is already in use", t.id)
	}
	return t, nil
}

// Launch records the job and runs fn in the background, under the jobs'
// lifetime (not the request's). It fails, running nothing, if the job
// cannot be recorded, for example because a concurrent request took its id.
func (j *Jobs) Launch(ctx context.Context, t *JobTicket, api string, fn JobFunc) error {
	j.init()
	id, hook := t.id, t.hook
	if err := j.DB.CreateJob(ctx, id, api, hook); err != nil {
		if _, gerr := j.DB.GetJob(ctx, id); gerr == nil {
			return badRequestf("X-Job-UUID %s is already in use", id)
		}
		return err
	}
	p := &dataplane.Progress{}
	j.mu.Lock()
	j.progress[id] = p
	j.mu.Unlock()
	j.wg.Add(1)
	j.Metrics.jobStarted()
	go func() {
		defer j.wg.Done()
		defer j.Metrics.jobEnded()
		result, err := fn(j.ctx, p)
		if err == nil && j.ctx.Err() != nil {
			err = errRefused("operation failed", "the daemon is shutting down")
		}
		var resBody, errBody []byte
		if err != nil {
			errBody, _ = json.Marshal(map[string]*ErrorCode{"error": errorCodeOf(err)})
		} else {
			if result == nil {
				result = map[string]any{}
			}
			resBody, _ = json.Marshal(result)
		}
		// Record with a fresh context: a shutdown must still record
		// how the job ended.
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := j.DB.FinishJob(rctx, id, resBody, errBody); err != nil {
			j.log().Error("recording job", "job", id, "err", err)
		}
		j.mu.Lock()
		delete(j.progress, id)
		j.mu.Unlock()
		if hook != "" {
			body := resBody
			if errBody != nil {
				body = errBody
			}
			j.callHook(hook, id, errBody == nil, body)
		}
	}()
	return nil
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
