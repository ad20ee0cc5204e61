package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volback/volback/chunkstore/ratelimit"
	"github.com/volback/volback/control/apitest"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/nbd"
)

// testDaemon is the daemon's API in the test's process, over a real HTTP
// server (httptest): the same handlers, jobs, inventory and volumes as
// volback daemon, without the binary.
type testDaemon struct {
	t       *testing.T
	dir     string
	base    string // .../zstack/v1
	session string
	api     *API
}

func startTestDaemon(t *testing.T) *testDaemon {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	db, err := inventory.Open(ctx, filepath.Join(dir, "inventory.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.EnsureAccount(ctx, adminAccountUUID, "admin", inventory.HashPassword("password")); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	host := &Host{StateDir: dir, NBD: nbd.NewServer()}
	jobs := &Jobs{DB: db, Log: log}
	api := &API{DB: db, Jobs: jobs, Host: host, Log: log}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(func() {
		srv.Close()
		jobs.Close()
		host.Close()
		db.Close()
	})
	d := &testDaemon{t: t, dir: dir, base: srv.URL + "/zstack/v1", api: api}
	c := d.client()
	c.Login("password")
	d.session = c.Session
	return d
}

func (d *testDaemon) client() *apitest.Client {
	return &apitest.Client{T: d.t, Base: d.base, Session: d.session}
}

func (d *testDaemon) do(method, path, auth, body string, headers map[string]string) httpResult {
	d.t.Helper()
	r := d.client().Do(method, path, auth, body, headers)
	return httpResult{r.Status, r.Body}
}

// job sends an async call and polls its location until it ends.
func (d *testDaemon) job(method, path, body string, headers map[string]string) httpResult {
	d.t.Helper()
	r := d.client().Job(method, path, body, headers)
	return httpResult{r.Status, r.Body}
}

// storageAndVolume adds an ImageStore and a data volume of size bytes.
func (d *testDaemon) storageAndVolume(bs, vol string, size int64) {
	d.t.Helper()
	if r := d.job("POST", "/backup-storage/image-store", fmt.Sprintf(`{"params":{"name":"s","url":"%s","resourceUuid":"%s"}}`, filepath.Join(d.dir, "store-"+bs), bs), nil); r.status != 200 {
		d.t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	if r := d.job("POST", "/volumes/data", fmt.Sprintf(`{"params":{"name":"v","diskSize":%d,"resourceUuid":"%s"}}`, size, vol), nil); r.status != 200 {
		d.t.Fatalf("create volume: %d %s", r.status, r.body)
	}
}

// TestAPIErrors: every way a CreateVolumeBackup can be wrong, each with its
// exact status and code, and none leaves an inventory behind.
func TestAPIErrors(t *testing.T) {
	d := startTestDaemon(t)
	const bsUUID = "1c4b0a3a24533c4faa9b156a0ef98fdf"
	vol := "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	d.storageAndVolume(bsUUID, vol, 1<<20)
	auth := "OAuth " + d.session
	body := func(extra string) string {
		return `{"params":{"backupStorageUuid":"` + bsUUID + `","name":"b"` + extra + `}}`
	}
	type apiCase struct {
		name, method, path, auth, body string
		headers                        map[string]string
		status                         int
		code                           string
	}
	backups := "/volumes/" + vol + "/volume-backups"
	cases := []apiCase{
		{"no Authorization", "POST", backups, "", body(""), nil, 400, ""},
		{"not OAuth", "POST", backups, "Basic x", body(""), nil, 400, ""},
		{"unknown session", "POST", backups, "OAuth bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", body(""), nil, 503, "ID.1001"},
		{"bad JSON", "POST", backups, auth, `{"params":`, nil, 400, ""},
		{"bad params", "POST", backups, auth, `{"params":{"name":5}}`, nil, 400, `:bad params: field "name": a JSON number is not accepted there`},
		{"bad JSON", "POST", backups, auth, `{"params":{"name":`, nil, 400, ":bad JSON: the JSON ends too soon"},
		{"bad action JSON", "PUT", "/volume-backups/" + vol + "/actions", auth, `{"revertVolumeFromVolumeBackup":[}`, nil, 400, ":bad JSON: malformed JSON at byte"},
		{"storage url /etc", "POST", "/backup-storage/image-store", auth, `{"params":{"name":"x","url":"/etc"}}`, nil, 503, "SYS.1007:neither empty nor a volback repository"},
		{"storage url a file", "POST", "/backup-storage/image-store", auth, `{"params":{"name":"x","url":"/etc/hostname"}}`, nil, 503, "SYS.1007:not a directory"},
		{"unknown volume", "POST", "/volumes/cccccccccccccccccccccccccccccccc/volume-backups", auth, body(""), nil, 503, "SYS.1003"},
		{"unknown storage", "POST", backups, auth, `{"params":{"backupStorageUuid":"dddddddddddddddddddddddddddddddd","name":"b"}}`, nil, 503, "SYS.1003"},
		{"no name", "POST", backups, auth, `{"params":{"backupStorageUuid":"` + bsUUID + `"}}`, nil, 503, "SYS.1007"},
		{"unknown tag", "POST", backups, auth, `{"params":{"backupStorageUuid":"` + bsUUID + `","name":"b"},"systemTags":["nope::x"]}`, nil, 503, "SYS.1007"},
		{"bad parallelism", "POST", backups, auth, `{"params":{"backupStorageUuid":"` + bsUUID + `","name":"b"},"systemTags":["volumeLiveBackup::parallelismDegree::0"]}`, nil, 503, "SYS.1007"},
		{"bad fsInfo", "POST", backups, auth, `{"params":{"backupStorageUuid":"` + bsUUID + `","name":"b"},"systemTags":["fsInfo::type::ftp::url::x"]}`, nil, 503, "SYS.1007"},
		{"bad cidr", "POST", backups, auth, `{"params":{"backupStorageUuid":"` + bsUUID + `","name":"b"},"systemTags":["backup::network::cidr::10.0.0.0"]}`, nil, 503, "SYS.1007"},
		{"bandwidth too low", "POST", backups, auth, body(`,"volumeReadBandwidth":100`), nil, 503, "SYS.1007"},
		{"bad mode", "POST", backups, auth, body(`,"mode":"partial"`), nil, 503, "SYS.1007"},
		{"bad resourceUuid", "POST", backups, auth, body(`,"resourceUuid":"XYZ"`), nil, 503, "SYS.1007:resourceUuid"},
		{"bad X-Job-UUID", "POST", backups, auth, body(""), map[string]string{"X-Job-UUID": "nope"}, 400, ""},
		{"bad X-Web-Hook", "POST", backups, auth, body(""), map[string]string{"X-Web-Hook": "ftp://x"}, 400, ""},
		{"query on an unknown field", "GET", "/volume-backups?q=nosuch=1", auth, "", nil, 503, "SYS.1007"},
		{"unknown action", "PUT", "/volume-backups/" + vol + "/actions", auth, `{"frobnicate":{}}`, nil, 400, ":the body doesn't contain action mapping to the URL[/zstack/v1/volume-backups/" + vol + "/actions]"},
		{"revert unknown backup", "PUT", "/volume-backups/" + vol + "/actions", auth, `{"revertVolumeFromVolumeBackup":{}}`, nil, 503, "SYS.1003"},
		{"delete unknown backup", "DELETE", "/volume-backups/" + vol, auth, "", nil, 503, "SYS.1003"},
		{"reclaim unknown storage", "PUT", "/backup-storage/image-store/" + vol + "/actions", auth, `{"reclaimSpaceFromImageStore":{}}`, nil, 503, "SYS.1003"},
		{"storage url relative", "POST", "/backup-storage/image-store", auth, `{"params":{"name":"x","url":"rel"}}`, nil, 503, "SYS.1007"},
		{"volume size", "POST", "/volumes/data", auth, `{"params":{"name":"x","diskSize":-1}}`, nil, 503, "SYS.1007:diskSize"},
	}
	// Tags whose target cannot be used are refused before any data moves,
	// with the tag and the reason in the error.
	for name, tc := range map[string]struct{ tag, want string }{
		"nfs version":         {"fsInfo::type::nfs::url::127.0.0.1:/e::options::vers=4", "only NFS version 3"},
		"nfs unknown option":  {"fsInfo::type::nfs::url::127.0.0.1:/e::options::nolock,frob=2", "not supported: frob=2"},
		"nfs bad url":         {"fsInfo::type::nfs::url::127.0.0.1:/a/../b", "not allowed"},
		"s3 secret in tag":    {"fsInfo::type::s3::url::s3://b/p::options::secret-key=x", "credentials do not belong"},
		"s3 unknown option":   {"fsInfo::type::s3::url::s3://b/p::options::colour=red", "not supported: colour=red"},
		"s3 bad url":          {"fsInfo::type::s3::url::ftp://h/b", "want s3://"},
		"no address in cidr":  {"backup::network::cidr::198.51.100.0/24", "no address of this host is inside the backup network 198.51.100.0/24"},
		"cidr given twice":    {"backup::network::cidr::127.0.0.0/8\",\"backup::network::cidr::10.0.0.0/8", "more than once"},
		"fsInfo without type": {"fsInfo::url::x", "unknown system tag"},
	} {
		cases = append(cases, apiCase{name, "POST", backups, auth, `{"params":{"backupStorageUuid":"` + bsUUID + `","name":"b"},"systemTags":["` + tc.tag + `"]}`, nil, 503, "SYS.1007:" + tc.want})
	}
	for _, c := range cases {
		r := d.do(c.method, c.path, c.auth, c.body, c.headers)
		code, want, _ := strings.Cut(c.code, ":")
		if r.status != c.status || (code != "" && errCode(t, r) != code) || !strings.Contains(string(r.body), want) {
			t.Errorf("%s: got %d %s, want %d %s", c.name, r.status, r.body, c.status, c.code)
		}
		// An answer speaks of the request, never of this program's types.
		if b := string(r.body); strings.Contains(b, "Go ") || strings.Contains(b, "struct") || strings.Contains(b, "control.") {
			t.Errorf("%s: the answer names Go types: %s", c.name, b)
		}
	}
	// Duplicate X-Job-UUID: the second request with the same id is refused.
	h := map[string]string{"X-Job-UUID": "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"}
	if r := d.job("POST", backups, body(""), h); r.status != 200 {
		t.Fatalf("backup with X-Job-UUID: %d %s", r.status, r.body)
	}
	if r := d.do("POST", backups, auth, body(""), h); r.status != 400 {
		t.Errorf("duplicate X-Job-UUID: %d %s", r.status, r.body)
	}
	// Nothing failed above may leave an inventory behind.
	r := d.do("GET", "/volume-backups?replyWithCount=true", auth, "", nil)
	if r.json(t)["total"] != float64(1) || bytes.Contains(r.body, []byte("Creating")) {
		t.Errorf("inventory after the errors: %s", r.body)
	}
}

// TestAPIConcurrency: fifty clients log in and query while four backups
// run at once; nothing fails and four inventories result.
func TestAPIConcurrency(t *testing.T) {
	d := startTestDaemon(t)
	const bs = "1c4b0a3a24533c4faa9b156a0ef98fdf"
	if r := d.job("POST", "/backup-storage/image-store", `{"params":{"name":"s","url":"`+filepath.Join(d.dir, "store")+`","resourceUuid":"`+bs+`"}}`, nil); r.status != 200 {
		t.Fatalf("add storage: %d %s", r.status, r.body)
	}
	var vols []string
	for i := range 4 {
		id := fmt.Sprintf("%032x", i+1)
		if r := d.job("POST", "/volumes/data", `{"params":{"name":"v","diskSize":16777216,"resourceUuid":"`+id+`"}}`, nil); r.status != 200 {
			t.Fatalf("create volume: %d %s", r.status, r.body)
		}
		if err := d.api.Host.Volume(id).WriteAt(context.Background(), bytes.Repeat([]byte{byte(i + 1)}, 1<<20), 4<<20, false); err != nil {
			t.Fatal(err)
		}
		vols = append(vols, id)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 400)
	for _, v := range vols {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := d.job("POST", "/volumes/"+v+"/volume-backups", `{"params":{"backupStorageUuid":"`+bs+`","name":"c-`+v+`"}}`, nil); r.status != 200 {
				errs <- fmt.Sprintf("backup of %s: %d %s", v, r.status, r.body)
			}
		}()
	}
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := d.do("PUT", "/accounts/login", "", `{"logInByAccount":{"accountName":"admin","password":"`+inventory.HashPassword("password")+`"}}`, nil)
			if r.status != 200 {
				errs <- fmt.Sprintf("client %d login: %d %s", i, r.status, r.body)
				return
			}
			var m map[string]any
			_ = json.Unmarshal(r.body, &m)
			s := m["inventory"].(map[string]any)["uuid"].(string)
			for _, p := range []string{"/volume-backups", "/volumes", "/backup-storage", "/volume-backups?q=name~=c-%25&replyWithCount=true"} {
				if r := d.do("GET", p, "OAuth "+s, "", nil); r.status != 200 {
					errs <- fmt.Sprintf("client %d GET %s: %d %s", i, p, r.status, r.body)
				}
			}
			if r := d.do("GET", "/accounts/sessions/"+s+"/valid", "", "", nil); r.status != 200 {
				errs <- fmt.Sprintf("client %d validate: %d", i, r.status)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	r := d.do("GET", "/volume-backups?replyWithCount=true", "OAuth "+d.session, "", nil)
	if r.json(t)["total"] != float64(4) {
		t.Fatalf("inventory after the concurrent run: %s", r.body)
	}
}

// TestAPIBandwidthLimits: volumeReadBandwidth and networkWriteBandwidth
// hold a backup to its limit. A token bucket of rate R and burst B cannot
// pass N bytes in less than (N-B)/R, however idle or loaded the machine,
// so that lower bound is what is checked; the metadata records the limit.
func TestAPIBandwidthLimits(t *testing.T) {
	d := startTestDaemon(t)
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	const size, rate = 8 << 20, 4 << 20
	d.storageAndVolume(bs, vol, size)
	v := d.api.Host.Volume(vol)
	for i, limit := range []string{"volumeReadBandwidth", "networkWriteBandwidth"} {
		// New data each time, so every chunk is read and stored.
		data := make([]byte, size)
		for j := range data {
			data[j] = byte(j*7 + i*13 + j>>12)
		}
		if err := v.WriteAt(context.Background(), data, 0, true); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		r := d.job("POST", "/volumes/"+vol+"/volume-backups", fmt.Sprintf(`{"params":{"backupStorageUuid":"%s","name":"limited","mode":"full","%s":%d}}`, bs, limit, rate), nil)
		took := time.Since(start)
		if r.status != 200 {
			t.Fatalf("%s: %d %s", limit, r.status, r.body)
		}
		inv := r.json(t)["inventory"].(map[string]any)
		var md backupMetadata
		_ = json.Unmarshal([]byte(inv["metadata"].(string)), &md)
		// The volume read limit sees every byte; the network limit the
		// encoded bytes stored.
		moved := md.BytesRead
		if limit == "networkWriteBandwidth" {
			moved = md.BytesStored
		}
		burst := ratelimit.NewLimiter(rate).Burst()
		floor := time.Duration(float64(moved-int64(burst)) / rate * float64(time.Second))
		if took < floor {
			t.Errorf("%s %d B/s: %d bytes moved in %s, faster than the limit allows (%s)", limit, rate, moved, took, floor)
		}
		if md.Bandwidth[limit] != rate {
			t.Errorf("metadata records bandwidth %v, want %s %d", md.Bandwidth, limit, rate)
		}
	}
}

// TestAPIQueries: ZStack's query parameters on backups, volumes, storages
// and user tags, answered from the inventory.
func TestAPIQueries(t *testing.T) {
	d := startTestDaemon(t)
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	d.storageAndVolume(bs, vol, 1<<20)
	var ids []string
	for i, name := range []string{"b-one", "b-two", "other"} {
		r := d.job("POST", "/volumes/"+vol+"/volume-backups", fmt.Sprintf(`{"params":{"backupStorageUuid":"%s","name":"%s"},"userTags":["n%d"]}`, bs, name, i), nil)
		if r.status != 200 {
			t.Fatalf("backup %s: %d %s", name, r.status, r.body)
		}
		ids = append(ids, r.json(t)["inventory"].(map[string]any)["uuid"].(string))
	}
	auth := "OAuth " + d.session
	names := func(r httpResult) []string {
		t.Helper()
		var out []string
		for _, inv := range r.json(t)["inventories"].([]any) {
			out = append(out, fmt.Sprint(inv.(map[string]any)["name"]))
		}
		return out
	}
	for _, c := range []struct {
		query string
		want  string
	}{
		{"q=name~=b-%25&sort=-name", "[b-two b-one]"},
		{"q=name?=b-one,other&sort=%2Bname", "[b-one other]"},
		{"q=name!=other&limit=1&start=1&sort=%2Bname", "[b-two]"},
		{"q=volumeUuid=" + vol + "&q=mode=auto&q=name=b-one", "[b-one]"},
		{"q=description%20is%20null&q=name=other", "[other]"},
	} {
		r := d.do("GET", "/volume-backups?"+c.query, auth, "", nil)
		if r.status != 200 || fmt.Sprint(names(r)) != c.want {
			t.Errorf("?%s: %d %s, want names %s", c.query, r.status, r.body, c.want)
		}
	}
	if r := d.do("GET", "/volume-backups?count=true", auth, "", nil); r.json(t)["total"] != float64(3) || r.json(t)["inventories"] != nil {
		t.Errorf("count=true: %s", r.body)
	}
	if r := d.do("GET", "/volume-backups?replyWithCount=true&limit=1", auth, "", nil); r.json(t)["total"] != float64(3) || len(names(r)) != 1 {
		t.Errorf("replyWithCount with limit 1: %s", r.body)
	}
	r := d.do("GET", "/volume-backups/"+ids[1]+"?fields=uuid,name", auth, "", nil)
	invs := r.json(t)["inventories"].([]any)
	if len(invs) != 1 || len(invs[0].(map[string]any)) != 2 || invs[0].(map[string]any)["name"] != "b-two" {
		t.Errorf("by uuid with fields: %s", r.body)
	}
	r = d.do("GET", "/user-tags?q=tag=n2", auth, "", nil)
	tags := r.json(t)["inventories"].([]any)
	if len(tags) != 1 || tags[0].(map[string]any)["resourceUuid"] != ids[2] || tags[0].(map[string]any)["resourceType"] != "VolumeBackupVO" {
		t.Errorf("user tags: %s", r.body)
	}
	if r := d.do("GET", "/volumes/"+vol, auth, "", nil); len(r.json(t)["inventories"].([]any)) != 1 {
		t.Errorf("volume by uuid: %s", r.body)
	}
	if r := d.do("GET", "/backup-storage?q=uuid="+bs, auth, "", nil); len(r.json(t)["inventories"].([]any)) != 1 {
		t.Errorf("storage by uuid: %s", r.body)
	}
}

// TestAPIVolumeWriteBandwidth: volumeWriteBandwidth holds the writes a
// revert and a live restore make to the volume to the limit (the token
// bucket's floor, as in TestAPIBandwidthLimits).
func TestAPIVolumeWriteBandwidth(t *testing.T) {
	d := startTestDaemon(t)
	const bs, vol = "1c4b0a3a24533c4faa9b156a0ef98fdf", "ec7196ba2d993236aceddd9b31f5d19b"
	const size, rate = 8 << 20, 4 << 20
	d.storageAndVolume(bs, vol, size)
	v := d.api.Host.Volume(vol)
	data := make([]byte, size)
	for j := range data {
		data[j] = byte(j*7 + j>>12)
	}
	if err := v.WriteAt(context.Background(), data, 0, true); err != nil {
		t.Fatal(err)
	}
	r := d.job("POST", "/volumes/"+vol+"/volume-backups", fmt.Sprintf(`{"params":{"backupStorageUuid":"%s","name":"b"}}`, bs), nil)
	if r.status != 200 {
		t.Fatalf("backup: %d %s", r.status, r.body)
	}
	id := r.json(t)["inventory"].(map[string]any)["uuid"].(string)
	burst := int64(ratelimit.NewLimiter(rate).Burst())
	floor := func(bytes int64) time.Duration {
		return time.Duration(float64(bytes-burst) / rate * float64(time.Second))
	}

	// The whole volume differs from the backup: the revert writes it all.
	if err := v.WriteAt(context.Background(), make([]byte, size), 0, true); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r = d.job("PUT", "/volume-backups/"+id+"/actions", fmt.Sprintf(`{"revertVolumeFromVolumeBackup":{"volumeWriteBandwidth":%d}}`, rate), nil)
	took := time.Since(start)
	if r.status != 200 {
		t.Fatalf("revert: %d %s", r.status, r.body)
	}
	written := int64(r.json(t)["revert"].(map[string]any)["bytesWritten"].(float64))
	if written != size || took < floor(written) {
		t.Errorf("revert wrote %d bytes in %s; want %d, no faster than %s", written, took, size, floor(written))
	}

	start = time.Now()
	r = d.job("POST", "/volumes/data-volume/from/volume-template/"+id, fmt.Sprintf(`{"params":{"name":"slow","volumeWriteBandwidth":%d}}`, rate), nil)
	took = time.Since(start)
	if r.status != 200 {
		t.Fatalf("live restore: %d %s", r.status, r.body)
	}
	if took < floor(size) {
		t.Errorf("live restore of %d bytes in %s, faster than volumeWriteBandwidth allows (%s)", size, took, floor(size))
	}
}
