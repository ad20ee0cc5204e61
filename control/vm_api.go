package control

import (
	"context"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/control/inventory"
	"github.com/volback/volback/dataplane"
)

// attachVolume is AttachDataVolumeToVm (POST
// /volumes/{volumeUuid}/vm-instances/{vmInstanceUuid}): the data volume
// joins the VM, and the VM's backups take it from now on.
func (a *API) attachVolume(ctx context.Context, c *apiCall) (JobFunc, error) {
	id, vm := c.Path("volumeUuid"), c.Path("vmInstanceUuid")
	v, err := a.volume(ctx, id)
	if err != nil {
		return nil, err
	}
	if chunkstore.ValidID(vm) != nil {
		return nil, errInvalid("vmInstanceUuid must be 32 lowercase hex digits")
	}
	if v.Type == inventory.VolumeRoot {
		return nil, errRefused("cannot attach a root volume", "volume %s is a root volume; only data volumes attach to a VM", id)
	}
	if v.VMInstanceUUID != "" && v.VMInstanceUUID != vm {
		return nil, errRefused("volume attached", "volume %s is attached to VM %s; detach it first", id, v.VMInstanceUUID)
	}
	return func(ctx context.Context, _ *dataplane.Progress) (any, error) {
		if err := a.DB.SetVolumeVM(ctx, id, vm, inventory.VolumeData); err != nil {
			return nil, err
		}
		return a.volumeReply(ctx, id)
	}, nil
}

// detachVolume is DetachDataVolumeFromVm (DELETE
// /volumes/{uuid}/vm-instances, optionally ?vmUuid=).
func (a *API) detachVolume(ctx context.Context, c *apiCall) (JobFunc, error) {
	id := c.Path("uuid")
	v, err := a.volume(ctx, id)
	if err != nil {
		return nil, err
	}
	q, err := queryValues(c.r.URL.RawQuery)
	if err != nil {
		return nil, err
	}
	if vm := firstValue(q, "vmUuid"); vm != "" && vm != v.VMInstanceUUID {
		return nil, errRefused("volume not attached", "volume %s is not attached to VM %s", id, vm)
	}
	if v.Type == inventory.VolumeRoot {
		return nil, errRefused("cannot detach a root volume", "volume %s is the root volume of VM %s", id, v.VMInstanceUUID)
	}
	return func(ctx context.Context, _ *dataplane.Progress) (any, error) {
		if err := a.DB.SetVolumeVM(ctx, id, "", v.Type); err != nil {
			return nil, err
		}
		return a.volumeReply(ctx, id)
	}, nil
}

func (a *API) volumeReply(ctx context.Context, id string) (any, error) {
	v, err := a.DB.GetVolume(ctx, id)
	if err != nil {
		return nil, err
	}
	return map[string]any{"inventory": toVolumeInventory(v)}, nil
}

// createVmBackup is CreateVmBackup (POST /volumes/{rootVolumeUuid}/vm-backups):
// the root volume and every data volume attached to its VM, backed up at
// one instant (dataplane.BackupGroup), sharing a groupUuid (the
// resourceUuid if given); the answer is their inventories.
func (a *API) createVmBackup(ctx context.Context, c *apiCall) (JobFunc, error) {
	rootID := c.Path("rootVolumeUuid")
	root, err := a.volume(ctx, rootID)
	if err != nil {
		return nil, err
	}
	if root.Type != inventory.VolumeRoot || root.VMInstanceUUID == "" {
		return nil, errRefused("not a VM's root volume", "volume %s is a %s volume of VM %q; a VM backup starts from a root volume attached to a VM", rootID, root.Type, root.VMInstanceUUID)
	}
	req, err := a.parseBackupRequest(ctx, c)
	if err != nil {
		return nil, err
	}
	group, err := resourceID(req.p.ResourceUUID)
	if err != nil {
		return nil, err
	}
	if taken, err := a.DB.GroupBackups(ctx, group); err != nil {
		return nil, err
	} else if len(taken) > 0 {
		return nil, errInvalid("resourceUuid %s names a VM backup that exists", group)
	}
	vols, err := a.DB.VMVolumes(ctx, root.VMInstanceUUID)
	if err != nil {
		return nil, err
	}
	var members []dataplane.GroupMember
	var recs []*inventory.Volume
	var ids []string
	nQEMU := 0
	for _, v := range vols {
		if isQEMUPath(v.Path) {
			nQEMU++
		} else if lv := a.Host.Volume(v.UUID); lv != nil {
			members = append(members, dataplane.GroupMember{Volume: lv})
		} else {
			return nil, errRefused("volume not served", "volume %s of VM %s is recorded but not open on this host", v.UUID, root.VMInstanceUUID)
		}
		recs = append(recs, v)
		ids = append(ids, chunkstore.NewID())
	}
	// One instant is QEMU's transaction or volback's own pause of writes,
	// never both at once.
	qemuVM := nQEMU > 0
	if qemuVM && nQEMU != len(recs) {
		return nil, errRefused("VM disks of two kinds", "VM %s has disks in QEMU and disks served by volback: one instant cannot span both", root.VMInstanceUUID)
	}
	if qemuVM {
		sock := ""
		for _, v := range recs {
			src, err := qemuSource(v)
			if err != nil {
				return nil, errInvalid("%v", err)
			}
			if sock != "" && src.QMP != sock {
				return nil, errRefused("VM disks in two processes", "VM %s has disks in two QEMU processes (%s, %s): one instant needs one", root.VMInstanceUUID, sock, src.QMP)
			}
			sock = src.QMP
		}
	}
	undo := func() {
		for _, id := range ids {
			_ = a.DB.DeleteVolumeBackup(context.WithoutCancel(ctx), id)
		}
	}
	for i, v := range recs {
		if err := a.recordBackup(ctx, req, ids[i], v, group); err != nil {
			undo()
			return nil, err
		}
	}
	c.undo = undo
	return func(ctx context.Context, prog *dataplane.Progress) (any, error) {
		repo, err := a.openTarget(ctx, req)
		if err != nil {
			return nil, a.backupFailed("cannot open the backup target "+req.spec.String(), err, ids...)
		}
		defer repo.Close()
		for i := range members {
			members[i].Repo = repo
			members[i].Opts = req.liveOptions(ids[i], recs[i], group, nil)
			members[i].Opts.Untrusted = a.untrusted(ctx)
		}
		a.log().Info("VM backup started", "vm", root.VMInstanceUUID, "group", group, "volumes", len(recs), "target", req.spec.String(), "qemu", qemuVM)
		start := time.Now()
		var ms []*chunkstore.Manifest
		if qemuVM {
			ms, err = a.qemuGroupBackup(ctx, req, repo, ids, recs, group, prog)
		} else {
			ms, err = dataplane.BackupGroup(ctx, members)
		}
		if err != nil {
			a.log().Error("VM backup failed", "vm", root.VMInstanceUUID, "group", group, "err", err)
			return nil, a.backupFailed("VM backup of "+root.VMInstanceUUID+" to "+req.spec.String()+" failed", err, ids...)
		}
		invs := make([]any, 0, len(ms))
		for _, m := range ms {
			inv, err := a.finishBackup(ctx, req, m, time.Since(start).Seconds())
			if err != nil {
				return nil, a.backupFailed("cannot record the VM backup", err, ids...)
			}
			invs = append(invs, inv)
		}
		a.log().Info("VM backup done", "vm", root.VMInstanceUUID, "group", group, "seconds", time.Since(start).Seconds())
		return map[string]any{"inventories": invs}, nil
	}, nil
}

// group loads the backups of a VM backup: SYS.1003 if there are none.
func (a *API) group(ctx context.Context, id string) ([]*inventory.VolumeBackup, error) {
	bs, err := a.DB.GroupBackups(ctx, id)
	if err != nil {
		return nil, err
	}
	if len(bs) == 0 {
		return nil, errNotFound("no VM backup %s", id)
	}
	return bs, nil
}

// deleteVmBackup is DeleteVmBackup (DELETE /vm-backups/{groupUuid}, with
// backupStorageUuids and deleteMode as DeleteVolumeBackup's).
func (a *API) deleteVmBackup(ctx context.Context, c *apiCall) (JobFunc, error) {
	backups, err := a.group(ctx, c.Path("groupUuid"))
	if err != nil {
		return nil, err
	}
	var jobs []JobFunc
	for _, b := range backups {
		job, err := a.deleteJob(c, b)
		if err != nil {
			return nil, err
		}
		jobs = append(jobs, job)
	}
	return inTurn(jobs), nil
}

// revertVmFromVmBackup is RevertVmFromVmBackup (PUT /vm-backups/{groupUuid}/actions,
// {"revertVmFromVmBackup":{"backupStorageUuid":...}}): every volume of the
// group reverted, each to its backup.
func (a *API) revertVmFromVmBackup(ctx context.Context, c *apiCall) (JobFunc, error) {
	var p revertParams
	if err := c.Params(&p); err != nil {
		return nil, err
	}
	backups, err := a.group(ctx, c.Path("groupUuid"))
	if err != nil {
		return nil, err
	}
	var jobs []JobFunc
	for _, b := range backups {
		job, err := a.revertJob(ctx, b.UUID, p)
		if err != nil {
			return nil, err
		}
		jobs = append(jobs, job)
	}
	return inTurn(jobs), nil
}

// groupCopy is SyncVmBackupFromImageStoreBackupStorage and, with from and
// to swapped, RecoverVmBackupFromImageStoreBackupStorage: every backup of
// the group copied.
func (a *API) groupCopy(recover bool) asyncFunc {
	return func(ctx context.Context, c *apiCall) (JobFunc, error) {
		var p copyParams
		if err := c.Params(&p); err != nil {
			return nil, err
		}
		from, to := p.Src, p.Dst
		if recover {
			from, to = to, from
		}
		backups, err := a.group(ctx, c.Path("groupUuid"))
		if err != nil {
			return nil, err
		}
		var jobs []JobFunc
		for _, b := range backups {
			job, err := a.copyJob(ctx, b.UUID, from, to, p)
			if err != nil {
				return nil, err
			}
			jobs = append(jobs, job)
		}
		return func(ctx context.Context, prog *dataplane.Progress) (any, error) {
			var invs []any
			for _, job := range jobs {
				res, err := job(ctx, prog)
				if err != nil {
					return nil, err
				}
				invs = append(invs, res.(map[string]any)["inventory"])
			}
			return map[string]any{"inventories": invs}, nil
		}, nil
	}
}

// inTurn runs the jobs of a group's members one after the other; the first
// failure ends it.
func inTurn(jobs []JobFunc) JobFunc {
	return func(ctx context.Context, prog *dataplane.Progress) (any, error) {
		for _, job := range jobs {
			if _, err := job(ctx, prog); err != nil {
				return nil, err
			}
		}
		return map[string]any{}, nil
	}
}
