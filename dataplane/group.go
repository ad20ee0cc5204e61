package dataplane

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/volback/volback/chunkstore"
)

// GroupMember is one volume of a group backup, with where and how it goes.
type GroupMember struct {
	Volume *Volume
	Repo   *chunkstore.Repository
	Opts   LiveBackupOptions
}

// BackupGroup backs up several live volumes (the volumes of one VM) at a
// single instant: every member is prepared first; then the write gates of
// all are taken together (in volume-id order, so two groups sharing a
// volume cannot deadlock), which drains the writes in flight to every one
// of them; every map is swapped and copy-before-write installed on each;
// the gates are released, and the backups run side by side. A write to any
// member is thus before the instant on all of them or after it on all.
//
// If any member fails, the group fails: its frozen changes go back into
// the maps of the members that did not finish, and the manifests of those
// that did are deleted (their chains' next backups read everything again,
// saying why), so no half group remains.
func BackupGroup(ctx context.Context, members []GroupMember) ([]*chunkstore.Manifest, error) {
	pending := make([]*pendingBackup, 0, len(members))
	abortAll := func() {
		for _, p := range pending {
			p.abort()
		}
	}
	seen := map[*Volume]bool{}
	for _, m := range members {
		if seen[m.Volume] {
			abortAll()
			return nil, fmt.Errorf("volume %s is in the group twice", m.Volume.ID)
		}
		seen[m.Volume] = true
		p, err := m.Volume.prepareBackup(ctx, m.Repo, m.Opts)
		if err != nil {
			abortAll()
			return nil, err
		}
		pending = append(pending, p)
	}

	// The instant.
	order := make([]*pendingBackup, len(pending))
	copy(order, pending)
	sort.Slice(order, func(i, j int) bool { return order[i].v.ID < order[j].v.ID })
	for _, p := range order {
		p.v.gate.Lock()
	}
	var ferr error
	frozen := 0
	for _, p := range order {
		if ferr = p.freezeLocked(); ferr != nil {
			break
		}
		frozen++
	}
	if ferr != nil {
		for _, p := range order[:frozen] {
			p.thawLocked()
		}
	}
	for i := len(order) - 1; i >= 0; i-- {
		order[i].v.gate.Unlock()
	}
	if ferr != nil {
		abortAll()
		return nil, ferr
	}

	// The backups, side by side.
	out := make([]*chunkstore.Manifest, len(pending))
	errs := make([]error, len(pending))
	var wg sync.WaitGroup
	for i, p := range pending {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = p.run(ctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for i, m := range out {
			if m != nil {
				_ = members[i].Repo.DeleteManifest(context.WithoutCancel(ctx), m.ID)
			}
		}
		return nil, fmt.Errorf("group backup: %w", err)
	}
	return out, nil
}
