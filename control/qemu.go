package control

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
	"github.com/volback/volback/dataplane/qemu"
)

// A volume whose disk a running QEMU (or qemu-storage-daemon) holds is
// recorded with the path qmp:///PATH/TO/qmp.sock?node=NODE[&nbd=SOCK]:
// volback does not serve it, QEMU does; backups and reverts go through
// QMP (dataplane/qemu). nbd= names the socket of an NBD server QEMU runs
// already, on which a revert exports the disk; agent= the host side of the
// VM's guest agent channel, so backups freeze the guest's file systems.

const qemuScheme = "qmp://"

// isQEMUPath reports whether a volume path names a QEMU disk.
func isQEMUPath(p string) bool { return strings.HasPrefix(p, qemuScheme) }

// parseQEMUVolume reads qmp:///PATH?node=NODE into its source; name is
// how errors will name the process.
func parseQEMUVolume(p, name string) (qemu.Source, string, error) {
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "qmp" || u.Host != "" || !filepath.IsAbs(u.Path) {
		return qemu.Source{}, "", fmt.Errorf("QEMU volume %q: want qmp:///PATH/TO/qmp.sock?node=NODE", p)
	}
	q := u.Query()
	node, nbdSock, agent := q.Get("node"), q.Get("nbd"), q.Get("agent")
	for k := range q {
		if k != "node" && k != "nbd" && k != "agent" {
			return qemu.Source{}, "", fmt.Errorf("QEMU volume %q: unknown option %q (want node=, nbd= and agent=)", p, k)
		}
	}
	if agent != "" && !filepath.IsAbs(agent) {
		return qemu.Source{}, "", fmt.Errorf("QEMU volume %q: agent= is the absolute path of the guest agent channel's Unix socket", p)
	}
	if nbdSock != "" && !filepath.IsAbs(nbdSock) {
		return qemu.Source{}, "", fmt.Errorf("QEMU volume %q: nbd= is the absolute path of the Unix socket of QEMU's own NBD server", p)
	}
	if node == "" || strings.ContainsAny(node, " \t\n") {
		return qemu.Source{}, "", fmt.Errorf("QEMU volume %q: node= names the disk's block node or device", p)
	}
	sock := filepath.Clean(u.Path)
	canonical := qemuScheme + sock + "?node=" + url.QueryEscape(node)
	if nbdSock != "" {
		nbdSock = filepath.Clean(nbdSock)
		canonical += "&nbd=" + url.QueryEscape(nbdSock)
	}
	if agent != "" {
		agent = filepath.Clean(agent)
		canonical += "&agent=" + url.QueryEscape(agent)
	}
	return qemu.Source{QMP: sock, Node: node, Name: name, NBD: nbdSock, Agent: agent}, canonical, nil
}

// qemuSource is the source of a recorded QEMU volume; errors name the VM
// when the volume has one.
func qemuSource(v *inventory.Volume) (qemu.Source, error) {
	name := "QEMU of volume " + v.UUID
	if v.VMInstanceUUID != "" {
		name = "VM " + v.VMInstanceUUID
	}
	src, _, err := parseQEMUVolume(v.Path, name)
	return src, err
}

// qemuParent finds the last backup of a QEMU volume in the request's chain
// (same storage, same target) and loads it; "" reason means it can carry
// an incremental backup.
func (a *API) qemuParent(ctx context.Context, req *backupRequest, vrec *inventory.Volume, repo *chunkstore.Repository) (*chunkstore.Manifest, string) {
	if req.mode == chunkstore.ModeFull {
		return nil, "full backup requested"
	}
	all, err := a.DB.VolumeBackupsWithStatus(ctx, vrec.UUID, inventory.StatusReady)
	if err != nil {
		return nil, fmt.Sprintf("cannot read the inventory: %v", err)
	}
	tgt := refTarget(req.spec, req.bs)
	var last *inventory.VolumeBackup
	for _, b := range all {
		if !slices.ContainsFunc(b.Refs, func(r inventory.BackupStorageRef) bool {
			return r.BackupStorageUUID == req.bs.UUID && r.Target == tgt
		}) {
			continue
		}
		if last == nil || b.Created.After(last.Created) {
			last = b
		}
	}
	if last == nil {
		return nil, "first backup of this volume to this storage"
	}
	m, err := repo.LoadManifest(ctx, last.UUID)
	switch {
	case err != nil:
		return nil, fmt.Sprintf("the chain's last backup %s cannot be read: %v", last.UUID, err)
	case a.untrusted(ctx)(last.UUID):
		return nil, fmt.Sprintf("the chain's last backup %s failed verification", last.UUID)
	case m.VolumeID != vrec.UUID:
		return nil, fmt.Sprintf("the chain's last backup %s is of volume %s, not of this one", last.UUID, m.VolumeID)
	case m.Meta["source"] != "qemu":
		return nil, fmt.Sprintf("the chain's last backup %s was not read through QEMU", last.UUID)
	case m.ChunkSize != repo.ChunkSize():
		return nil, fmt.Sprintf("the chain's last backup %s uses another chunk size", last.UUID)
	}
	return m, ""
}

// qemuBackup backs a QEMU volume up into repo for req.
func (a *API) qemuBackup(ctx context.Context, req *backupRequest, repo *chunkstore.Repository, id string, vrec *inventory.Volume, group string, prog *dataplane.Progress) (*chunkstore.Manifest, error) {
	ms, err := a.qemuGroupBackup(ctx, req, repo, []string{id}, []*inventory.Volume{vrec}, group, prog)
	if err != nil {
		return nil, err
	}
	return ms[0], nil
}

// qemuGroupBackup backs up QEMU volumes of one process at one instant
// (one QMP transaction), each into a backup of its own.
func (a *API) qemuGroupBackup(ctx context.Context, req *backupRequest, repo *chunkstore.Repository, ids []string, vrecs []*inventory.Volume, group string, prog *dataplane.Progress) ([]*chunkstore.Manifest, error) {
	members := make([]qemu.Member, len(vrecs))
	for i, vrec := range vrecs {
		m, err := a.qemuMember(ctx, req, repo, ids[i], vrec, group, prog)
		if err != nil {
			return nil, err
		}
		members[i] = m
	}
	rs, err := qemu.BackupGroup(ctx, repo, members)
	if err != nil {
		return nil, err
	}
	ms := make([]*chunkstore.Manifest, len(rs))
	for i, res := range rs {
		ms[i] = res.Manifest
		a.log().Info("QEMU volume backed up", "volume", vrecs[i].UUID, "backup", ids[i], "mode", res.Manifest.Mode,
			"fromQEMU", res.BytesFromQEMU, "bitmap", res.Bitmap, "qemu", res.QEMU, "fullReason", res.Manifest.Meta["fullReason"])
	}
	return ms, nil
}

// qemuMember is one QEMU volume's part of a backup.
func (a *API) qemuMember(ctx context.Context, req *backupRequest, repo *chunkstore.Repository, id string, vrec *inventory.Volume, group string, prog *dataplane.Progress) (qemu.Member, error) {
	src, err := qemuSource(vrec)
	if err != nil {
		return qemu.Member{}, err
	}
	lo := req.liveOptions(id, vrec, group, prog)
	chain := chainOf(req.bs, req.spec)
	opts := qemu.BackupOptions{Chain: chain, StagingDir: a.Host.StateDir}
	opts.ID, opts.VolumeID, opts.Parallelism, opts.Progress = id, vrec.UUID, lo.Parallelism, prog
	opts.ReadBytesPerSec = lo.ReadBytesPerSec
	opts.Meta = lo.Meta
	opts.Meta["source"] = "qemu"
	parent, reason := a.qemuParent(ctx, req, vrec, repo)
	if parent != nil {
		opts.Parent, opts.PrevBitmap = parent, qemu.BitmapName(chain, parent.ID)
	} else {
		opts.Meta["fullReason"] = reason
	}
	return qemu.Member{Source: src, Options: opts}, nil
}

// registerQEMUVolume records (or updates) a QEMU volume given on the
// command line; QEMU must be reachable, so the disk's size is known.
func registerQEMUVolume(ctx context.Context, db *inventory.DB, id string, spec VolumeSpec) error {
	src, canonical, err := parseQEMUVolume(spec.Path, "QEMU of volume "+id)
	if err != nil {
		return fmt.Errorf("--volume %s: %w", id, err)
	}
	size, err := qemu.Probe(ctx, src)
	if err != nil {
		return fmt.Errorf("--volume %s: %w", id, err)
	}
	rec, err := db.GetVolume(ctx, id)
	switch {
	case err == nil && rec.Path != canonical:
		return fmt.Errorf("--volume %s=%s: volume %s is recorded with path %s; delete it first to register another disk", id, canonical, id, rec.Path)
	case err == nil:
		if (spec.Type != "" && spec.Type != rec.Type) || (spec.VM != "" && spec.VM != rec.VMInstanceUUID) {
			return db.SetVolumeVM(ctx, id, cmp.Or(spec.VM, rec.VMInstanceUUID), cmp.Or(spec.Type, rec.Type))
		}
		return nil
	case !errors.Is(err, inventory.ErrNotFound):
		return err
	}
	return db.AddVolume(ctx, &inventory.Volume{UUID: id, Name: src.Node, Path: canonical, Size: size,
		Type: cmp.Or(spec.Type, inventory.VolumeRoot), VMInstanceUUID: spec.VM, State: inventory.StateEnabled, Status: inventory.StatusReady})
}

// qemuRevert reverts a QEMU volume to backup m.
func (a *API) qemuRevert(ctx context.Context, vrec *inventory.Volume, repo *chunkstore.Repository, m *chunkstore.Manifest, prog *dataplane.Progress, writeBPS int64) (dataplane.RevertStats, error) {
	src, err := qemuSource(vrec)
	if err != nil {
		return dataplane.RevertStats{}, err
	}
	st, err := qemu.Revert(ctx, repo, src, m, qemu.RevertOptions{SocketDir: a.Host.StateDir, Progress: prog, WriteBytesPerSec: writeBPS})
	if err == nil {
		a.log().Info("QEMU volume reverted", "volume", vrec.UUID, "backup", m.ID, "chunksWritten", st.ChunksWritten, "chunksSame", st.ChunksSame)
	}
	return st, err
}

// qemuVolumeTagPrefix marks CreateDataVolume's system tag that records a
// disk QEMU holds instead of creating a file: qemuVolume::qmp:///SOCK?node=NODE.
const qemuVolumeTagPrefix = "qemuVolume::"

func qemuVolumeTag(tags []string) (string, bool) {
	for _, t := range tags {
		if u, ok := strings.CutPrefix(t, qemuVolumeTagPrefix); ok {
			return u, true
		}
	}
	return "", false
}

// addQEMUVolume is CreateDataVolume with a qemuVolume tag: QEMU must be
// reachable and its disk of size want (0: any).
func (a *API) addQEMUVolume(id, name, disk string, want int64) (JobFunc, error) {
	src, canonical, err := parseQEMUVolume(disk, "QEMU of volume "+id)
	if err != nil {
		return nil, errTag(&TagError{Tag: qemuVolumeTagPrefix + disk, Reason: err.Error()})
	}
	return func(ctx context.Context, _ *dataplane.Progress) (any, error) {
		size, err := qemu.Probe(ctx, src)
		if err != nil {
			return nil, errFailed("cannot reach the disk in QEMU", err)
		}
		if want > 0 && want != size {
			return nil, errInvalid("diskSize %d: the disk in QEMU is %d bytes", want, size)
		}
		v := &inventory.Volume{UUID: id, Name: name, Path: canonical, Size: size, Type: inventory.VolumeData,
			State: inventory.StateEnabled, Status: inventory.StatusReady}
		if err := a.DB.AddVolume(ctx, v); err != nil {
			return nil, errFailed("cannot record the volume", err)
		}
		a.log().Info("QEMU volume recorded", "volume", id, "disk", canonical, "size", size)
		return map[string]any{"inventory": toVolumeInventory(v)}, nil
	}, nil
}
