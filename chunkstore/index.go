package chunkstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
)

// The backup index: what listing backups needs, without reading every
// manifest. A manifest holds one key per chunk of its volume (256 Ki keys
// for 1 TiB), so reading them all to print a table grows with the number
// of backups times their size. An index object packs the summaries (a
// manifest less its chunk list) of many backups; listing reads the newest
// index and only the manifests it lacks, then writes a new index once
// enough were missing. Garbage collection, which reads every manifest
// anyway, writes one too.
//
// Manifests never change once written, so a summary stays true as long as
// its manifest exists; the listing of manifests/ stays the authority on
// which backups exist (an index entry whose manifest is gone is dropped).
// An index that cannot be read is ignored. Index objects are named
// index/TIME-TOKEN; writers remove the ones older than theirs.
const indexPrefix = "index/"

const (
	indexMagic       = "VBI1" // zstd(JSON)
	indexMagicSealed = "VBI2" // sealed zstd(JSON), encrypted repositories
	indexVersion     = 1
)

// IndexAfter is how many manifests a listing reads beyond the index before
// it writes a new one.
var IndexAfter = 64

// loadWorkers is how many manifests are read at once: each read is one
// round trip on S3, so a listing of thousands is latency-bound.
const loadWorkers = 16

type indexObject struct {
	Version int         `json:"version"`
	Written time.Time   `json:"written"`
	Backups []*Manifest `json:"backups"` // chunk lists left out
}

// SummaryStats says how a listing was answered.
type SummaryStats struct {
	Backups      int    // backups listed
	FromIndex    int    // summaries taken from the index
	Read         int    // manifests read
	Index        string // the index object used ("" = none)
	IndexWritten bool   // a new index was written
	IndexError   error  // why a new index could not be written (read-only credentials)
}

// Summaries returns a summary (the manifest without its chunk list, Chunks
// nil) of every backup in the repository, in no order, and names each
// manifest that cannot be read. If it read at least IndexAfter manifests
// beyond the index and write is set, it writes a new index (a failure to
// write is reported in the stats, not as an error).
func (r *Repository) Summaries(ctx context.Context, write bool) ([]*Manifest, []BadManifest, SummaryStats, error) {
	l, err := r.ListManifests(ctx)
	if err != nil {
		return nil, nil, SummaryStats{}, err
	}
	return r.SummariesOf(ctx, l, write)
}

// Listing is one listing of a repository's backups: their ids and their
// manifests' stored sizes (which bound how many are read at once).
type Listing struct {
	IDs   []string
	sizes map[string]int64
}

// ListManifests lists the repository's backups, for a caller that needs
// the ids first and the summaries after (SummariesOf): on a store of many
// backups a listing is many requests, better made once.
func (r *Repository) ListManifests(ctx context.Context) (*Listing, error) {
	ids, sizes, err := r.listManifests(ctx)
	if err != nil {
		return nil, err
	}
	return &Listing{IDs: ids, sizes: sizes}, nil
}

// SummariesOf is Summaries of the backups of an earlier listing: one
// deleted since is left out, one made since is not there.
func (r *Repository) SummariesOf(ctx context.Context, l *Listing, write bool) ([]*Manifest, []BadManifest, SummaryStats, error) {
	var st SummaryStats
	ids, sizes := l.IDs, l.sizes
	st.Backups = len(ids)
	known, name := r.readIndex(ctx)
	st.Index = name
	out := make([]*Manifest, 0, len(ids))
	var missing []string
	for _, id := range ids {
		if s, ok := known[id]; ok {
			out = append(out, s)
			continue
		}
		missing = append(missing, id)
	}
	st.FromIndex = len(out)
	var mu sync.Mutex
	var bad []BadManifest
	err := r.eachManifest(ctx, missing, sizes, func(id string, m *Manifest, err error) error {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case errors.Is(err, ErrNotFound): // deleted since the listing
		case errors.Is(err, ErrBadManifest):
			bad = append(bad, BadManifest{ID: id, Error: err.Error()})
		case err != nil:
			return err
		default:
			st.Read++
			out = append(out, summaryOf(m))
		}
		return nil
	})
	if err != nil {
		return nil, nil, st, err
	}
	if write && st.Read >= IndexAfter {
		if err := r.WriteIndex(ctx, out); err != nil {
			st.IndexError = err
		} else {
			st.IndexWritten = true
		}
	}
	return out, bad, st, nil
}

// summaryOf is m without its chunk list.
func summaryOf(m *Manifest) *Manifest {
	s := *m
	s.Chunks = nil
	return &s
}

// eachManifest reads the manifests of ids, up to loadWorkers at a time and
// never more than manifestBudget bytes of them (as listed) at once, since
// one manifest of a large volume decodes to tens of megabytes, and calls fn
// with each in the order of ids, from the calling goroutine (the mark
// relies on the order); fn's error stops it.
func (r *Repository) eachManifest(ctx context.Context, ids []string, sizes map[string]int64, fn func(id string, m *Manifest, err error) error) error {
	ctx, cancel := context.WithCancel(ctx)
	type result struct {
		m   *Manifest
		err error
	}
	// The budget is taken in the order of ids and given back once fn is
	// done with a manifest, so the next one fn needs always holds its
	// share: no wait can go round in a circle.
	budget := semaphore.NewWeighted(manifestBudget)
	weight := func(id string) int64 { return min(max(sizes[id], 1), manifestBudget) }
	slots := make([]chan result, len(ids))
	for i := range slots {
		slots[i] = make(chan result, 1)
	}
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(loadWorkers, len(ids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				m, err := r.LoadManifest(ctx, ids[i])
				slots[i] <- result{m, err}
			}
		}()
	}
	go func() {
		defer close(next)
		for i, id := range ids {
			if budget.Acquire(ctx, weight(id)) != nil {
				return
			}
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	// On the way out the producer and the workers are stopped, then
	// waited for.
	defer func() { cancel(); wg.Wait() }()
	for i, id := range ids {
		var res result
		select {
		case res = <-slots[i]:
		case <-ctx.Done():
			return ctx.Err()
		}
		err := fn(id, res.m, res.err)
		budget.Release(weight(id))
		if err != nil {
			return err
		}
	}
	return nil
}

// manifestBudget bounds the stored bytes of the manifests read at once
// (they decode to about four times as much).
const manifestBudget = 4 << 20

// readIndex returns the summaries of the newest readable index object, by
// backup id, and its name; none if there is none.
func (r *Repository) readIndex(ctx context.Context) (map[string]*Manifest, string) {
	var names []string
	if err := r.store.List(ctx, indexPrefix, func(info Info) error {
		if _, ok := indexTime(info.Name); ok {
			names = append(names, info.Name)
		}
		return nil
	}); err != nil {
		return nil, ""
	}
	slices.Sort(names)
	// Newest first; an unreadable one (removed since the listing, torn,
	// of another key) makes way for the one before it.
	for i := len(names) - 1; i >= 0 && i >= len(names)-3; i-- {
		b, err := r.store.Get(ctx, names[i])
		if err != nil {
			continue
		}
		x, err := r.decodeIndex(names[i], b)
		if err != nil {
			continue
		}
		known := make(map[string]*Manifest, len(x.Backups))
		for _, s := range x.Backups {
			if s != nil && ValidID(s.ID) == nil {
				s.Chunks = nil
				known[s.ID] = s
			}
		}
		return known, names[i]
	}
	return nil, ""
}

// WriteIndex writes an index object of the given summaries (their chunk
// lists are left out) and removes the older index objects.
func (r *Repository) WriteIndex(ctx context.Context, ms []*Manifest) error {
	x := indexObject{Version: indexVersion, Written: time.Now().UTC(), Backups: make([]*Manifest, len(ms))}
	for i, m := range ms {
		x.Backups[i] = summaryOf(m)
	}
	slices.SortFunc(x.Backups, func(a, b *Manifest) int { return strings.Compare(a.ID, b.ID) })
	var tok [6]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return err
	}
	name := fmt.Sprintf("%s%020d-%s", indexPrefix, x.Written.UnixNano(), hex.EncodeToString(tok[:]))
	js, err := json.Marshal(&x)
	if err != nil {
		return err
	}
	b := r.menc.EncodeAll(js, []byte(indexMagic))
	if r.keys != nil {
		sealed, err := seal(r.keys.meta, nil, b, indexAD(name))
		if err != nil {
			return err
		}
		b = append([]byte(indexMagicSealed), sealed...)
	}
	if err := r.store.Put(ctx, name, b); err != nil {
		return fmt.Errorf("%s: write index: %w", r.store.Location(), err)
	}
	if err := r.store.Sync(ctx); err != nil {
		return fmt.Errorf("%s: write index: %w", r.store.Location(), err)
	}
	// Older ones go; a reader that listed them falls back to ours or to
	// the manifests.
	var old []string
	_ = r.store.List(ctx, indexPrefix, func(info Info) error {
		if info.Name < name {
			old = append(old, info.Name)
		}
		return nil
	})
	for _, n := range old {
		_ = r.store.Delete(ctx, n)
	}
	return nil
}

func indexAD(name string) []byte { return []byte("volback index " + name) }

func (r *Repository) decodeIndex(name string, b []byte) (*indexObject, error) {
	if r.keys != nil {
		if !bytes.HasPrefix(b, []byte(indexMagicSealed)) {
			return nil, fmt.Errorf("index %s: not sealed", name)
		}
		p, err := unseal(r.keys.meta, b[len(indexMagicSealed):], indexAD(name))
		if err != nil {
			return nil, fmt.Errorf("index %s: %w", name, err)
		}
		b = p
	}
	if !bytes.HasPrefix(b, []byte(indexMagic)) {
		return nil, fmt.Errorf("index %s: bad magic", name)
	}
	js, err := r.mdec.DecodeAll(b[len(indexMagic):], nil)
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", name, err)
	}
	var x indexObject
	if err := json.Unmarshal(js, &x); err != nil {
		return nil, fmt.Errorf("index %s: %w", name, err)
	}
	if x.Version != indexVersion {
		return nil, fmt.Errorf("index %s: version %d", name, x.Version)
	}
	return &x, nil
}

// indexTime reads the time an index object was written from its name.
func indexTime(name string) (time.Time, bool) {
	base, ok := strings.CutPrefix(name, indexPrefix)
	if !ok {
		return time.Time{}, false
	}
	ts, _, ok := strings.Cut(base, "-")
	if !ok || len(ts) != 20 {
		return time.Time{}, false
	}
	n, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, n), true
}
