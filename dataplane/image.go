package dataplane

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/volback/volback/chunkstore"
)

// ImageOptions configures an Image.
type ImageOptions struct {
	// CacheChunks bounds the decoded chunks kept in memory (default 32:
	// 128 MiB of 4 MiB chunks).
	CacheChunks int
	// ReadAhead is how many chunks past a sequential read are fetched in
	// the background (default 8; negative disables it).
	ReadAhead int
	// Fetchers bounds concurrent chunk fetches for read-ahead (default 4).
	Fetchers int
}

// Image presents one backup as a read-only disk image of the volume's
// exact size. Chunks are fetched from the repository when first read,
// checked against their keys, and kept in a bounded LRU cache; reads that
// run forward start background fetches of the next chunks, so a
// sequential reader finds them decoded. All-zero chunks cost no I/O.
// It is safe for concurrent use.
type Image struct {
	repo *chunkstore.Repository
	m    *chunkstore.Manifest
	opts ImageOptions

	mu       sync.Mutex
	cache    map[int]*list.Element // chunk index -> element of lru (value *cached)
	lru      *list.List            // front = most recent
	inflight map[int]*fetch
	next     int // chunk a sequential reader is expected to read next
	sem      chan struct{}
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

type cached struct {
	i    int
	data []byte
}

type fetch struct {
	done chan struct{}
	data []byte
	err  error
}

// OpenImage returns the image of backup m in repo.
func OpenImage(repo *chunkstore.Repository, m *chunkstore.Manifest, opts ImageOptions) *Image {
	if opts.CacheChunks <= 0 {
		opts.CacheChunks = 32
	}
	if opts.ReadAhead == 0 {
		opts.ReadAhead = 8
	}
	if opts.ReadAhead > opts.CacheChunks/2 {
		opts.ReadAhead = opts.CacheChunks / 2
	}
	if opts.Fetchers <= 0 {
		opts.Fetchers = 4
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Image{repo: repo, m: m, opts: opts, cache: map[int]*list.Element{}, lru: list.New(),
		inflight: map[int]*fetch{}, sem: make(chan struct{}, opts.Fetchers), ctx: ctx, cancel: cancel, next: -1}
}

// Manifest returns the backup's manifest.
func (im *Image) Manifest() *chunkstore.Manifest { return im.m }

// Size is the volume's size.
func (im *Image) Size() int64 { return im.m.Size }

// Close stops read-ahead and drops the cache.
func (im *Image) Close() {
	im.cancel()
	im.wg.Wait()
	im.mu.Lock()
	im.cache = map[int]*list.Element{}
	im.lru.Init()
	im.mu.Unlock()
}

// ZeroChunk reports whether chunk i is all zeros (stored as no chunk).
func (im *Image) ZeroChunk(i int) bool { return im.m.Chunks[i].IsZero() }

// ReadAt fills p from offset off. The range must lie inside the image
// (callers clip to Size): a read past the end is an error, never a short
// read.
func (im *Image) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > im.m.Size {
		return fmt.Errorf("backup %s: read of %d bytes at %d outside its %d bytes", im.m.ID, len(p), off, im.m.Size)
	}
	cs := int64(im.m.ChunkSize)
	for len(p) > 0 {
		i := int(off / cs)
		within := off - int64(i)*cs
		n := min(int64(len(p)), int64(im.m.ChunkLen(i))-within)
		if im.m.Chunks[i].IsZero() {
			clear(p[:n])
		} else {
			data, err := im.chunk(ctx, i)
			if err != nil {
				return err
			}
			copy(p[:n], data[within:within+n])
		}
		im.sequential(i, within+n == int64(im.m.ChunkLen(i)))
		p = p[n:]
		off += n
	}
	return nil
}

// zeroPage is shared, read-only zeros for Slice.
var zeroPage = make([]byte, 1<<20)

// Slice returns n bytes at off without copying when they lie within one
// chunk: a slice of the cached chunk (or of shared zeros), which the
// caller must not modify. ok is false when the range crosses a chunk, for
// ReadAt to do.
func (im *Image) Slice(ctx context.Context, off int64, n int) (data []byte, ok bool, err error) {
	if off < 0 || n < 0 || off+int64(n) > im.m.Size {
		return nil, false, fmt.Errorf("backup %s: read of %d bytes at %d outside its %d bytes", im.m.ID, n, off, im.m.Size)
	}
	cs := int64(im.m.ChunkSize)
	i := int(off / cs)
	within := off - int64(i)*cs
	if within+int64(n) > int64(im.m.ChunkLen(i)) {
		return nil, false, nil
	}
	if im.m.Chunks[i].IsZero() {
		if n > len(zeroPage) {
			return nil, false, nil
		}
		im.sequential(i, within+int64(n) == int64(im.m.ChunkLen(i)))
		return zeroPage[:n], true, nil
	}
	c, err := im.chunk(ctx, i)
	if err != nil {
		return nil, false, err
	}
	im.sequential(i, within+int64(n) == int64(im.m.ChunkLen(i)))
	return c[within : within+int64(n)], true, nil
}

// sequential notes a read of chunk i and, if reads run forward, fetches
// the chunks after it in the background.
func (im *Image) sequential(i int, finished bool) {
	if im.opts.ReadAhead < 0 {
		return
	}
	im.mu.Lock()
	forward := i == im.next || i == im.next-1
	if finished {
		im.next = i + 1
	} else {
		im.next = i
	}
	if !forward {
		im.mu.Unlock()
		return
	}
	var todo []int
	for j := i + 1; j <= i+im.opts.ReadAhead && j < len(im.m.Chunks); j++ {
		if im.m.Chunks[j].IsZero() {
			continue
		}
		if _, ok := im.cache[j]; ok {
			continue
		}
		if _, ok := im.inflight[j]; ok {
			continue
		}
		f := &fetch{done: make(chan struct{})}
		im.inflight[j] = f
		todo = append(todo, j)
	}
	im.mu.Unlock()
	for _, j := range todo {
		im.wg.Add(1)
		go func(j int) {
			defer im.wg.Done()
			select {
			case im.sem <- struct{}{}:
			case <-im.ctx.Done():
				im.finish(j, nil, im.ctx.Err())
				return
			}
			data, err := im.repo.GetChunk(im.ctx, im.m.Chunks[j], nil)
			<-im.sem
			im.finish(j, data, err)
		}(j)
	}
}

// chunk returns chunk i's content, from the cache, a fetch in flight, or
// the repository.
func (im *Image) chunk(ctx context.Context, i int) ([]byte, error) {
	im.mu.Lock()
	if e, ok := im.cache[i]; ok {
		im.lru.MoveToFront(e)
		im.mu.Unlock()
		return e.Value.(*cached).data, nil
	}
	f, ok := im.inflight[i]
	if !ok {
		f = &fetch{done: make(chan struct{})}
		im.inflight[i] = f
		im.mu.Unlock()
		data, err := im.repo.GetChunk(ctx, im.m.Chunks[i], nil)
		im.finish(i, data, err)
		if err != nil {
			return nil, fmt.Errorf("backup %s offset %d: %w", im.m.ID, int64(i)*int64(im.m.ChunkSize), err)
		}
		return data, nil
	}
	im.mu.Unlock()
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if f.err != nil {
		if errors.Is(f.err, context.Canceled) && ctx.Err() == nil {
			// A read-ahead cancelled by Close; this reader still wants it.
			return im.chunk(ctx, i)
		}
		return nil, fmt.Errorf("backup %s offset %d: %w", im.m.ID, int64(i)*int64(im.m.ChunkSize), f.err)
	}
	return f.data, nil
}

func (im *Image) finish(i int, data []byte, err error) {
	im.mu.Lock()
	f := im.inflight[i]
	delete(im.inflight, i)
	if err == nil {
		if len(data) != im.m.ChunkLen(i) {
			err = fmt.Errorf("chunk %s is %d bytes, the backup needs %d", im.m.Chunks[i], len(data), im.m.ChunkLen(i))
		} else {
			im.cache[i] = im.lru.PushFront(&cached{i: i, data: data})
			for im.lru.Len() > im.opts.CacheChunks {
				old := im.lru.Remove(im.lru.Back()).(*cached)
				delete(im.cache, old.i)
			}
		}
	}
	im.mu.Unlock()
	if f != nil {
		f.data, f.err = data, err
		close(f.done)
	}
}

// Extents calls fn with runs of chunks from off on, each either data or
// zero (a hole), until fn returns false or length is covered.
func (im *Image) Extents(off, length int64, fn func(length int64, zero bool) bool) {
	cs := int64(im.m.ChunkSize)
	end := min(off+length, im.m.Size)
	for off < end {
		i := int(off / cs)
		zero := im.m.Chunks[i].IsZero()
		runEnd := off
		for j := i; j < len(im.m.Chunks) && im.m.Chunks[j].IsZero() == zero && runEnd < end; j++ {
			runEnd = min(int64(j)*cs+int64(im.m.ChunkLen(j)), end)
		}
		if !fn(runEnd-off, zero) {
			return
		}
		off = runEnd
	}
}

// Prefetch fetches the chunks of a range into the cache.
func (im *Image) Prefetch(ctx context.Context, off, length int64) error {
	cs := int64(im.m.ChunkSize)
	for i := off / cs; i*cs < min(off+length, im.m.Size); i++ {
		if !im.m.Chunks[i].IsZero() {
			if _, err := im.chunk(ctx, int(i)); err != nil {
				return err
			}
		}
	}
	return nil
}
