package nbdexport

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/mem"
	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/nbd"
)

const chunk = 64 << 10

// TestImage checks the read-only adapter: zero chunks are holes in
// base:allocation, writes are EPERM, other contexts EINVAL.
func TestImage(t *testing.T) {
	ctx := context.Background()
	repo, err := chunkstore.Init(ctx, mem.New(), chunkstore.InitOptions{ChunkSize: chunk})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 4*chunk)
	copy(data[chunk:], bytes.Repeat([]byte{7}, chunk)) // chunks 0, 2, 3 zero
	path := filepath.Join(t.TempDir(), "vol")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, size, err := dataplane.OpenVolume(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := dataplane.Backup(ctx, repo, f, size, dataplane.BackupOptions{VolumeID: "v"})
	if err != nil {
		t.Fatal(err)
	}
	im := dataplane.OpenImage(repo, m, dataplane.ImageOptions{})
	defer im.Close()
	b := Image{Image: im}
	var got []uint32
	var lens []int64
	if err := b.BlockStatus(ctx, nbd.MetaBaseAllocation, 0, size, func(l int64, f uint32) bool {
		got, lens = append(got, f), append(lens, l)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	hole := nbd.StateHole | nbd.StateZero
	if len(got) != 3 || got[0] != hole || got[1] != 0 || got[2] != hole || lens[0] != chunk || lens[1] != chunk || lens[2] != 2*chunk {
		t.Errorf("base:allocation %v %v, want a hole, a data chunk, two hole chunks", got, lens)
	}
	if err := b.WriteAt(ctx, []byte{1}, 0, false); !errors.Is(err, syscall.EPERM) {
		t.Errorf("write to a backup: %v, want EPERM", err)
	}
	if err := b.Zero(ctx, 0, 1, nbd.ZeroFlags{}); !errors.Is(err, syscall.EPERM) {
		t.Errorf("zero on a backup: %v, want EPERM", err)
	}
	if err := b.BlockStatus(ctx, "qemu:dirty-bitmap:x", 0, 1, func(int64, uint32) bool { return true }); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("unknown context: %v, want EINVAL", err)
	}
	if err := b.Cache(ctx, 0, size); err != nil {
		t.Errorf("cache: %v", err)
	}
}

// TestVolume checks the live adapter: the dirty map of a chain as
// qemu:dirty-bitmap:<chain>, holes as base:allocation, a fast zero the
// filesystem cannot do as nbd.ErrNotFast.
func TestVolume(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "vol")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 16*chunk); err != nil {
		t.Fatal(err)
	}
	v, err := dataplane.OpenLiveVolume("v", path, dataplane.VolumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	repo, err := chunkstore.Init(ctx, mem.New(), chunkstore.InitOptions{ChunkSize: chunk})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Backup(ctx, repo, dataplane.LiveBackupOptions{Chain: "c1"}); err != nil {
		t.Fatal(err)
	}
	b := Volume{Volume: v}
	if err := b.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 3*chunk, false); err != nil {
		t.Fatal(err)
	}
	if got := b.MetaContexts(); len(got) != 2 || got[0] != nbd.MetaBaseAllocation || got[1] != nbd.MetaDirtyBitmapSpace+"c1" {
		t.Errorf("contexts %v", got)
	}
	var dirtyAt []int64
	off := int64(0)
	if err := b.BlockStatus(ctx, nbd.MetaDirtyBitmapSpace+"c1", 0, 16*chunk, func(l int64, f uint32) bool {
		if f == nbd.StateDirty {
			dirtyAt = append(dirtyAt, off, l)
		}
		off += l
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if len(dirtyAt) != 2 || dirtyAt[0] != 3*chunk || dirtyAt[1] != dataplane.DefaultGranularity {
		t.Errorf("dirty extents %v, want one of %d bytes at %d", dirtyAt, dataplane.DefaultGranularity, 3*chunk)
	}
	var data int64
	if err := b.BlockStatus(ctx, nbd.MetaBaseAllocation, 0, 16*chunk, func(l int64, f uint32) bool {
		if f == 0 {
			data += l
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if data == 0 || data >= 16*chunk {
		t.Errorf("base:allocation reports %d data bytes of a sparse volume written once", data)
	}
	if err := b.BlockStatus(ctx, nbd.MetaDirtyBitmapSpace+"nope", 0, 1, func(int64, uint32) bool { return true }); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("unknown chain: %v, want EINVAL", err)
	}
}
