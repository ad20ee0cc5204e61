package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/target"
	"github.com/volback/volback/control/inventory"
)

// API serves ZStack's REST API under /zstack/v1.
//
// Every handler has one of two shapes: a synchronous one returns the reply
// body or an error; an asynchronous one returns the job to run or an
// error, and the wrapper answers 202 with the job's location and runs it.
// The wrapper does everything else once: authentication, reading the JSON
// body, X-Job-UUID and X-Web-Hook, turning errors into ZStack's answers
// (see errors.go) and encoding. Adding a ZStack call is one line in
// Handler and one handler function.
type API struct {
	DB      *inventory.DB
	Jobs    *Jobs
	Host    *Host
	Metrics *Metrics
	Log     *slog.Logger
	// TargetEnv holds the daemon's S3 credentials, if configured.
	TargetEnv target.Env
	// BaseURL is the API's address as clients reach it, such as
	// https://backup1.example.com:8080, from which job locations are
	// built; "" means the address the request's connection arrived at
	// (never the client's Host header, which anyone may set).
	BaseURL string

	guardOnce sync.Once
	guard     *loginGuard

	// KeyDir holds the key files of encrypted repositories, named by the
	// encryptionKey::NAME system tag; "" refuses such tags.
	KeyDir string
	// Open opens repositories; nil means target.OpenRepository. Handler
	// tests put in-memory repositories behind it.
	Open    Opener
	handler http.Handler
	exports *backupExports
}

// syncFunc handles a synchronous call: the reply (200) or an error.
type syncFunc func(ctx context.Context, c *apiCall) (any, error)

// asyncFunc handles an asynchronous call: having checked the request, it
// returns the work to run as a job, or an error answered at once.
type asyncFunc func(ctx context.Context, c *apiCall) (JobFunc, error)

// endpoint is what one route (or one action of an actions route) does.
type endpoint struct {
	api   string // the job's API name, for async endpoints
	sync  syncFunc
	async asyncFunc
}

// Handler returns the API's routes.
func (a *API) Handler() http.Handler {
	if a.handler != nil {
		return a.handler
	}
	r := &router{api: a, mux: http.NewServeMux(), actions: map[string]map[string]endpoint{}}
	r.public("PUT /zstack/v1/accounts/login", a.logIn)
	r.public("DELETE /zstack/v1/accounts/sessions/{uuid}", a.logOut)
	r.public("GET /zstack/v1/accounts/sessions/{uuid}/valid", a.validateSession)
	// ZStack matches the job path before anything else: no credential
	// check (a plain curl of the location works), and GET only.
	r.public("GET /zstack/v1/api-jobs/{uuid}", a.pollJob)
	r.mux.HandleFunc("/zstack/v1/api-jobs/{uuid}", func(w http.ResponseWriter, _ *http.Request) {
		plainText(w, http.StatusMethodNotAllowed, "only GET method is allowed for querying job status")
	})
	if a.Metrics != nil {
		r.mux.Handle("GET /metrics", a.Metrics.Handler())
	}
	if a.Host != nil && a.Jobs != nil {
		r.async("POST /zstack/v1/backup-storage/image-store", "AddImageStoreBackupStorage", a.addImageStore)
		r.sync("GET /zstack/v1/backup-storage", a.queryStorages)
		r.sync("GET /zstack/v1/backup-storage/{uuid}", a.queryStorages)
		r.async("DELETE /zstack/v1/backup-storage/{uuid}", "DeleteBackupStorage", a.deleteBackupStorage)
		r.action("PUT /zstack/v1/backup-storage/image-store/{uuid}/actions", "reclaimSpaceFromImageStore", "ReclaimSpaceFromImageStore", a.reclaimSpace)
		r.sync("GET /zstack/v1/user-tags", a.queryUserTags)
		r.sync("GET /zstack/v1/user-tags/{uuid}", a.queryUserTags)
		r.async("POST /zstack/v1/volumes/data", "CreateDataVolume", a.createDataVolume)
		r.sync("GET /zstack/v1/volumes", a.queryVolumes)
		r.sync("GET /zstack/v1/volumes/{uuid}", a.queryVolumes)
		r.async("DELETE /zstack/v1/volumes/{uuid}", "DeleteDataVolume", a.deleteDataVolume)
		r.async("POST /zstack/v1/volumes/{volumeUuid}/volume-backups", "CreateVolumeBackup", a.createVolumeBackup)
		r.sync("GET /zstack/v1/volume-backups", a.queryVolumeBackups)
		r.sync("GET /zstack/v1/volume-backups/{uuid}", a.queryVolumeBackups)
		r.async("DELETE /zstack/v1/volume-backups/{uuid}", "DeleteVolumeBackup", a.deleteVolumeBackup)
		r.action("PUT /zstack/v1/volume-backups/imageStore/{storageUuid}/actions", "syncVolumeBackup", "SyncVolumeBackup", a.syncVolumeBackups)
		r.action("PUT /zstack/v1/volume-backups/{uuid}/actions", "revertVolumeFromVolumeBackup", "RevertVolumeFromVolumeBackup", a.revertVolume)
		r.action("PUT /zstack/v1/volume-backups/{uuid}/actions", "syncBackupFromImageStoreBackupStorage", "SyncBackupFromImageStoreBackupStorage", a.syncBackupCopy)
		r.action("PUT /zstack/v1/volume-backups/{uuid}/actions", "recoverBackupFromImageStoreBackupStorage", "RecoverBackupFromImageStoreBackupStorage", a.recoverBackupCopy)
		r.action("PUT /zstack/v1/volume-backups/{uuid}/actions", "verifyVolumeBackup", "VerifyVolumeBackup", a.verifyVolumeBackup)
		r.async("POST /zstack/v1/volumes/data-volume/from/volume-template/{backupUuid}", "CreateDataVolumeFromVolumeBackup", a.createVolumeFromBackup)
		r.async("POST /zstack/v1/volumes/{volumeUuid}/vm-instances/{vmInstanceUuid}", "AttachDataVolumeToVm", a.attachVolume)
		r.async("DELETE /zstack/v1/volumes/{uuid}/vm-instances", "DetachDataVolumeFromVm", a.detachVolume)
		r.async("POST /zstack/v1/volumes/{rootVolumeUuid}/vm-backups", "CreateVmBackup", a.createVmBackup)
		r.async("DELETE /zstack/v1/vm-backups/{groupUuid}", "DeleteVmBackup", a.deleteVmBackup)
		r.action("PUT /zstack/v1/vm-backups/{groupUuid}/actions", "revertVmFromVmBackup", "RevertVmFromVmBackup", a.revertVmFromVmBackup)
		r.action("PUT /zstack/v1/vm-backups/{groupUuid}/actions", "syncVmBackupFromImageStoreBackupStorage", "SyncVmBackupFromImageStoreBackupStorage", a.groupCopy(false))
		r.action("PUT /zstack/v1/vm-backups/{groupUuid}/actions", "recoverVmBackupFromImageStoreBackupStorage", "RecoverVmBackupFromImageStoreBackupStorage", a.groupCopy(true))
		r.action("PUT /zstack/v1/vm-backups/imageStore/{storageUuid}/actions", "syncVmBackup", "SyncVmBackup", a.syncVolumeBackups)
	}
	a.handler = unmatched(r.mux)
	return a.handler
}

// unmatched answers what no route takes as ZStack's REST server does: an
// unknown path is 404 "no api mapping to <path>", a known path with a
// method it does not take is 405 "The method[M] is not allowed for the
// path[P]", both plain text.
func unmatched(mux *http.ServeMux) http.Handler {
	methods := []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		for _, m := range methods {
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "" {
				plainText(w, http.StatusMethodNotAllowed, fmt.Sprintf("The method[%s] is not allowed for the path[%s]", r.Method, r.URL.RequestURI()))
				return
			}
		}
		plainText(w, http.StatusNotFound, "no api mapping to "+r.URL.Path)
	})
}

// Opener opens the repository on a target (target.OpenRepository's shape).
type Opener func(ctx context.Context, spec target.Spec, env target.Env, opts target.RepoOptions) (*chunkstore.Repository, error)

// openRepo opens a repository through the API's opener.
func (a *API) log() *slog.Logger {
	if a.Log != nil {
		return a.Log
	}
	return slog.Default()
}

// router registers endpoints on a mux. PUT .../actions paths carry the
// action's name as the body's key ({"revertVolumeFromVolumeBackup":{}}),
// so one path serves several endpoints, picked by that key.
type router struct {
	api     *API
	mux     *http.ServeMux
	actions map[string]map[string]endpoint
}

func (r *router) public(pattern string, fn syncFunc) {
	r.mux.Handle(pattern, r.api.serve(true, func(*apiCall) (endpoint, error) { return endpoint{sync: fn}, nil }))
}

func (r *router) sync(pattern string, fn syncFunc) {
	r.mux.Handle(pattern, r.api.serve(false, func(*apiCall) (endpoint, error) { return endpoint{sync: fn}, nil }))
}

func (r *router) async(pattern, api string, fn asyncFunc) {
	r.mux.Handle(pattern, r.api.serve(false, func(*apiCall) (endpoint, error) { return endpoint{api: api, async: fn}, nil }))
}

// action registers one action of an actions path; its handler is async.
func (r *router) action(pattern, name, api string, fn asyncFunc) {
	acts := r.actions[pattern]
	if acts == nil {
		acts = map[string]endpoint{}
		r.actions[pattern] = acts
		r.mux.Handle(pattern, r.api.serve(false, func(c *apiCall) (endpoint, error) { return c.pickAction(acts) }))
	}
	acts[name] = endpoint{api: api, async: fn}
}

// apiCall is one API request as a handler sees it.
type apiCall struct {
	r *http.Request
	w http.ResponseWriter // for headers of the answer (Retry-After)
	// params is the JSON of the call's parameters: the "params" of a
	// POST body, or the action's object of a PUT actions body.
	params     json.RawMessage
	systemTags []string
	userTags   []string
	// undo, if set by an async handler, runs when its job cannot be
	// launched after all (it recorded something the job would finish).
	undo func()
	// jobUUID is the id the call's job will have (async calls only).
	jobUUID string
}

// Path returns a path parameter.
func (c *apiCall) Path(name string) string { return c.r.PathValue(name) }

// Params decodes the call's parameters into v; numbers stay json.Number
// where v asks for them (Gson sends 1.073741824E9 for integers).
func (c *apiCall) Params(v any) error {
	if len(c.params) == 0 || string(c.params) == "null" {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(c.params)))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return badRequestf("bad params: %s", jsonProblem(err))
	}
	return nil
}

// SystemTags returns the call's system tags.
func (c *apiCall) SystemTags() []string { return c.systemTags }

// UserTags returns the call's user tags, never nil.
func (c *apiCall) UserTags() []string { return nonNil(c.userTags) }

// pickAction finds the endpoint an actions body names.
func (c *apiCall) pickAction(acts map[string]endpoint) (endpoint, error) {
	var body map[string]json.RawMessage
	if len(c.params) > 0 {
		if err := json.Unmarshal(c.params, &body); err != nil {
			return endpoint{}, badRequestf("bad JSON: %s", jsonProblem(err))
		}
	}
	for name, ep := range acts {
		if p, ok := body[name]; ok {
			c.params = p
			return ep, nil
		}
	}
	return endpoint{}, badRequestf("the body doesn't contain action mapping to the URL[%s]", c.r.URL.Path)
}

// maxBody is the largest request body read.
const maxBody = 1 << 20

// serve is the one wrapper every route goes through: authenticate unless
// public, decode the body, pick the endpoint, accept the job headers, run the handler
// and answer.
func (a *API) serve(public bool, pick func(*apiCall) (endpoint, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := &apiCall{r: r, w: w}
		ctx := r.Context()
		if !public {
			if err := a.authenticate(r); err != nil {
				a.answerError(w, err)
				return
			}
		}
		if err := c.readBody(r); err != nil {
			a.answerError(w, err)
			return
		}
		ep, err := pick(c)
		if err != nil {
			a.answerError(w, err)
			return
		}
		if ep.sync != nil {
			reply, err := ep.sync(ctx, c)
			if err != nil {
				a.answerError(w, err)
				return
			}
			if raw, ok := reply.(rawReply); ok {
				if raw.text {
					plainText(w, raw.status, string(raw.body))
					return
				}
				w.Header().Set("Content-Type", jsonContentType)
				w.WriteHeader(raw.status)
				_, _ = w.Write(raw.body)
				return
			}
			writeZJSON(w, http.StatusOK, reply)
			return
		}
		ticket, err := a.Jobs.Accept(ctx, r)
		if err != nil {
			a.answerError(w, err)
			return
		}
		c.jobUUID = ticket.id
		run, err := ep.async(ctx, c)
		if err != nil {
			a.answerError(w, err)
			return
		}
		if err := a.Jobs.Launch(ctx, ticket, ep.api, run); err != nil {
			if c.undo != nil {
				c.undo()
			}
			a.answerError(w, err)
			return
		}
		writeZJSON(w, http.StatusAccepted, map[string]string{"location": a.baseURL(r) + "/zstack/v1/api-jobs/" + ticket.id})
	})
}

// baseURL is the scheme and authority job locations start with.
func (a *API) baseURL(r *http.Request) string {
	if a.BaseURL != "" {
		return a.BaseURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		return scheme + "://" + la.String()
	}
	return scheme + "://127.0.0.1" // no connection (a handler called directly)
}

// readBody reads a JSON body of at most maxBody bytes. A POST body is
// ZStack's {"params":{...},"systemTags":[],"userTags":[]}; a PUT body is
// {"<action>":{...},"systemTags":[],...}, kept whole for pickAction.
func (c *apiCall) readBody(r *http.Request) error {
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return badRequestf("reading the body: %v", err)
	}
	if len(b) > maxBody {
		return badRequestf("body larger than %d bytes", maxBody)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	var env struct {
		Params     json.RawMessage `json:"params"`
		SystemTags []string        `json:"systemTags"`
		UserTags   []string        `json:"userTags"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return badRequestf("bad JSON: %s", jsonProblem(err))
	}
	c.systemTags, c.userTags = env.SystemTags, env.UserTags
	if r.Method == http.MethodPost {
		c.params = env.Params
	} else {
		c.params = b
	}
	return nil
}

// authenticate checks "Authorization: OAuth <session>" as ZStack does: a
// missing header and another scheme are two malformed requests (400, with
// ZStack's texts); an empty, unknown or expired session is ID.1001.
func (a *API) authenticate(r *http.Request) error {
	vals, present := r.Header["Authorization"]
	if !present || len(vals) == 0 {
		return badRequestf("missing header 'Authorization'")
	}
	auth := strings.TrimSpace(vals[0])
	if !strings.HasPrefix(auth, "OAuth") {
		return badRequestf("Authorization type must be 'OAuth'")
	}
	id := strings.TrimSpace(strings.TrimPrefix(auth, "OAuth"))
	if id == "" {
		return &ErrorCode{Code: CodeInvalidSession, Description: "invalid session", Details: "the OAuth token is empty; log in and send 'OAuth <session uuid>'"}
	}
	_, err := a.DB.ValidSession(r.Context(), id)
	if errors.Is(err, inventory.ErrNotFound) {
		return &ErrorCode{Code: CodeInvalidSession, Description: "invalid session", Details: "the session is unknown or has expired; log in again"}
	}
	return err
}

// rawReply is a reply already encoded, with its own status.
type rawReply struct {
	status int
	body   []byte
	text   bool // plain text, not JSON
}

// textReply is a plain-text answer, as ZStack's REST server gives for
// requests it refuses before any API runs.
func textReply(status int, msg string) rawReply {
	return rawReply{status: status, body: []byte(msg), text: true}
}

const jsonContentType = "application/json;charset=UTF-8"

// plainText answers msg as it is, the way ZStack's REST server writes the
// texts of requests it refuses (no trailing newline).
func plainText(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain;charset=UTF-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg)
}

func writeZJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", jsonContentType)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// jsonReply is v encoded, answered with status.
func jsonReply(status int, v any) rawReply {
	b, _ := json.Marshal(v)
	return rawReply{status: status, body: append(b, '\n')}
}

// jsonProblem says what is wrong with a request's JSON in the request's
// terms (the field, the kind of value, the offset), never naming this
// program's Go types.
func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te) && te.Field != "":
		return fmt.Sprintf("field %q: a JSON %s is not accepted there", te.Field, te.Value)
	case errors.As(err, &te):
		return fmt.Sprintf("a JSON %s is not accepted there", te.Value)
	case errors.As(err, &se) && strings.Contains(se.Error(), "end of JSON input"):
		return "the JSON ends too soon"
	case errors.As(err, &se):
		return fmt.Sprintf("malformed JSON at byte %d", se.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return "the JSON ends too soon"
	}
	return "the JSON cannot be read"
}
