package inventory

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"time"
)

// BackupStorage is a registered backup storage (an ImageStore directory).
type BackupStorage struct {
	UUID       string
	Name       string
	Type       string // "ImageStoreBackupStorage"
	URL        string
	Hostname   string
	Username   string
	SystemTags string // JSON array
	Created    time.Time
	LastOp     time.Time
}

// Volume is a volume the daemon serves.
type Volume struct {
	UUID, Name, Path string
	Size             int64
	Type             VolumeType
	State            State
	Status           Status
	VMInstanceUUID   string // the VM it is attached to; "" for none
	Created, LastOp  time.Time
}

// VolumeBackup is a backup's inventory record.
type VolumeBackup struct {
	UUID, VolumeUUID, Name, Description string
	Type                                VolumeType
	State                               State
	Status                              Status
	Size                                int64
	Metadata                            string // JSON object
	Mode                                string
	UserTags                            string // JSON array
	// GroupUUID and VMInstanceUUID tie the backups of one VM backup
	// together; "" for a volume backup alone.
	GroupUUID, VMInstanceUUID string
	// JobUUID is the job making the backup while it is Creating.
	JobUUID         string
	Created, LastOp time.Time
	Refs            []BackupStorageRef
}

// BackupStorageRef says where a backup is stored.
type BackupStorageRef struct {
	VolumeBackupUUID, BackupStorageUUID, InstallPath string
	Status                                           Status
	// Target is the JSON of the target the backup was written to when it
	// is not the storage's own url (an fsInfo tag); "" otherwise.
	Target          string
	Created, LastOp time.Time
}

func ns(t time.Time) int64 { return t.UnixNano() }
func tm(n int64) time.Time { return time.Unix(0, n).UTC() }

// AddBackupStorage records a backup storage.
func (d *DB) AddBackupStorage(ctx context.Context, b *BackupStorage) error {
	now := d.now().UTC()
	b.Created, b.LastOp = now, now
	if b.SystemTags == "" {
		b.SystemTags = "[]"
	}
	_, err := d.db.ExecContext(ctx, `INSERT INTO backup_storages(uuid, name, type, url, hostname, username, system_tags, create_date, last_op_date)
		VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)`, b.UUID, b.Name, b.Type, b.URL, b.Hostname, b.Username, b.SystemTags, ns(now), ns(now))
	if err != nil {
		return fmt.Errorf("backup storage %s: %w", b.UUID, err)
	}
	return nil
}

const storageCols = `uuid, name, type, url, COALESCE(hostname, ''), COALESCE(username, ''), system_tags, create_date, last_op_date`

func scanStorage(row interface{ Scan(...any) error }) (*BackupStorage, error) {
	var b BackupStorage
	var c, l int64
	if err := row.Scan(&b.UUID, &b.Name, &b.Type, &b.URL, &b.Hostname, &b.Username, &b.SystemTags, &c, &l); err != nil {
		return nil, err
	}
	b.Created, b.LastOp = tm(c), tm(l)
	return &b, nil
}

// GetBackupStorage returns one backup storage.
func (d *DB) GetBackupStorage(ctx context.Context, uuid string) (*BackupStorage, error) {
	b, err := scanStorage(d.db.QueryRowContext(ctx, `SELECT `+storageCols+` FROM backup_storages WHERE uuid = ?`, uuid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	return b, err
}

// ListBackupStorages returns every backup storage.
func (d *DB) ListBackupStorages(ctx context.Context) ([]*BackupStorage, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT `+storageCols+` FROM backup_storages ORDER BY create_date`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*BackupStorage
	for rows.Next() {
		b, err := scanStorage(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// DeleteBackupStorage removes a backup storage record.
func (d *DB) DeleteBackupStorage(ctx context.Context, uuid string) error {
	return d.deleteRow(ctx, "backup_storages", uuid)
}

func (d *DB) deleteRow(ctx context.Context, table, uuid string) error {
	r, err := d.db.ExecContext(ctx, `DELETE FROM `+table+` WHERE uuid = ?`, uuid)
	if err != nil {
		return fmt.Errorf("%s %s: %w", table, uuid, err)
	}
	if n, _ := r.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// AddVolume records a volume.
func (d *DB) AddVolume(ctx context.Context, v *Volume) error {
	now := d.now().UTC()
	v.Created, v.LastOp = now, now
	_, err := d.db.ExecContext(ctx, `INSERT INTO volumes(uuid, name, path, size, type, state, status, vm_instance_uuid, create_date, last_op_date)
		VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, v.UUID, v.Name, v.Path, v.Size, v.Type, v.State, v.Status, nullIfEmpty(v.VMInstanceUUID), ns(now), ns(now))
	if err != nil {
		return fmt.Errorf("volume %s: %w", v.UUID, err)
	}
	return nil
}

const volumeCols = `uuid, name, path, size, type, state, status, COALESCE(vm_instance_uuid, ''), create_date, last_op_date`

func scanVolume(row interface{ Scan(...any) error }) (*Volume, error) {
	var v Volume
	var c, l int64
	if err := row.Scan(&v.UUID, &v.Name, &v.Path, &v.Size, &v.Type, &v.State, &v.Status, &v.VMInstanceUUID, &c, &l); err != nil {
		return nil, err
	}
	v.Created, v.LastOp = tm(c), tm(l)
	return &v, nil
}

// GetVolume returns one volume.
func (d *DB) GetVolume(ctx context.Context, uuid string) (*Volume, error) {
	v, err := scanVolume(d.db.QueryRowContext(ctx, `SELECT `+volumeCols+` FROM volumes WHERE uuid = ?`, uuid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	return v, err
}

// SetVolumeStatus sets a volume's status.
func (d *DB) SetVolumeStatus(ctx context.Context, uuid string, status Status) error {
	r, err := d.db.ExecContext(ctx, `UPDATE volumes SET status = ?, last_op_date = ? WHERE uuid = ?`, status, ns(d.now()), uuid)
	if err != nil {
		return fmt.Errorf("volume %s: %w", uuid, err)
	}
	if n, _ := r.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// DeleteVolume removes a volume record.
func (d *DB) DeleteVolume(ctx context.Context, uuid string) error {
	return d.deleteRow(ctx, "volumes", uuid)
}

// CreateVolumeBackup records a backup in status Creating with its
// storage reference, in one transaction. A zero b.Created means now.
func (d *DB) CreateVolumeBackup(ctx context.Context, b *VolumeBackup, ref BackupStorageRef) error {
	now := d.now().UTC()
	if !b.Created.IsZero() {
		now = b.Created.UTC()
	}
	b.Created, b.LastOp = now, now
	if b.UserTags == "" {
		b.UserTags = "[]"
	}
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO volume_backups(uuid, volume_uuid, name, description, type, state, status, size, metadata, mode, user_tags, group_uuid, vm_instance_uuid, job_uuid, create_date, last_op_date)
		VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, b.UUID, b.VolumeUUID, b.Name, nullIfEmpty(b.Description), b.Type, b.State, b.Status, b.Size,
		nullIfEmpty(b.Metadata), b.Mode, b.UserTags, nullIfEmpty(b.GroupUUID), nullIfEmpty(b.VMInstanceUUID), nullIfEmpty(b.JobUUID), ns(now), ns(now)); err != nil {
		return fmt.Errorf("volume backup %s: %w", b.UUID, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO user_tags(uuid, resource_uuid, resource_type, tag, create_date, last_op_date)
		SELECT lower(hex(randomblob(16))), ?, 'VolumeBackupVO', value, ?, ? FROM json_each(?)`, b.UUID, ns(now), ns(now), b.UserTags); err != nil {
		return fmt.Errorf("volume backup %s: user tags: %w", b.UUID, err)
	}
	ref.VolumeBackupUUID = b.UUID
	ref.Created, ref.LastOp = now, now
	if _, err := tx.ExecContext(ctx, `INSERT INTO volume_backup_refs(volume_backup_uuid, backup_storage_uuid, install_path, status, target, create_date, last_op_date)
		VALUES(?, ?, ?, ?, ?, ?, ?)`, ref.VolumeBackupUUID, ref.BackupStorageUUID, ref.InstallPath, ref.Status, nullIfEmpty(ref.Target), ns(now), ns(now)); err != nil {
		return fmt.Errorf("volume backup %s: %w", b.UUID, err)
	}
	if ref.Target != "" {
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO storage_targets(storage_uuid, target, create_date) VALUES(?, ?, ?)`,
			ref.BackupStorageUUID, ref.Target, ns(now)); err != nil {
			return fmt.Errorf("volume backup %s: %w", b.UUID, err)
		}
	}
	b.Refs = []BackupStorageRef{ref}
	return tx.Commit()
}

// FinishVolumeBackup sets a backup's status (and its refs'), size and
// metadata in one transaction.
func (d *DB) FinishVolumeBackup(ctx context.Context, uuid string, status Status, size int64, metadata string) error {
	now := ns(d.now())
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	r, err := tx.ExecContext(ctx, `UPDATE volume_backups SET status = ?, size = ?, metadata = ?, job_uuid = NULL, last_op_date = ? WHERE uuid = ?`, status, size, nullIfEmpty(metadata), now, uuid)
	if err != nil {
		return fmt.Errorf("volume backup %s: %w", uuid, err)
	}
	if n, _ := r.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	if _, err := tx.ExecContext(ctx, `UPDATE volume_backup_refs SET status = ?, last_op_date = ? WHERE volume_backup_uuid = ?`, status, now, uuid); err != nil {
		return fmt.Errorf("volume backup %s: %w", uuid, err)
	}
	return tx.Commit()
}

// DeleteVolumeBackup removes a backup record and its refs.
func (d *DB) DeleteVolumeBackup(ctx context.Context, uuid string) error {
	return d.deleteRow(ctx, "volume_backups", uuid)
}

// BackupsWithStatus lists the backups in any of statuses, with refs.
func (d *DB) BackupsWithStatus(ctx context.Context, statuses ...Status) ([]*VolumeBackup, error) {
	args := make([]any, len(statuses))
	for i, st := range statuses {
		args[i] = st
	}
	return d.loadBackups(ctx, ` WHERE status IN (`+placeholders(len(statuses))+`)`, args...)
}

// VolumeBackupsWithStatus lists one volume's backups in a status, with
// their refs, oldest first.
func (d *DB) VolumeBackupsWithStatus(ctx context.Context, volumeUUID string, status Status) ([]*VolumeBackup, error) {
	return d.loadBackups(ctx, ` WHERE volume_uuid = ? AND status = ?`, volumeUUID, status)
}

// CreatingBackups lists the backups left in Creating, with their refs:
// at start, those a previous run did not settle.
func (d *DB) CreatingBackups(ctx context.Context) ([]*VolumeBackup, error) {
	return d.loadBackups(ctx, ` WHERE status = ?`, StatusCreating)
}

const backupCols = `uuid, volume_uuid, name, COALESCE(description, ''), type, state, status, size, COALESCE(metadata, ''), mode, user_tags,
	COALESCE(group_uuid, ''), COALESCE(vm_instance_uuid, ''), COALESCE(job_uuid, ''), create_date, last_op_date`

// loadBackups loads the backups a WHERE clause of this package selects,
// with their refs, in create_date order.
func (d *DB) loadBackups(ctx context.Context, where string, args ...any) ([]*VolumeBackup, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT `+backupCols+` FROM volume_backups`+where+` ORDER BY create_date`, args...)
	if err != nil {
		return nil, fmt.Errorf("load volume backups: %w", err)
	}
	defer rows.Close()
	var out []*VolumeBackup
	byID := map[string]*VolumeBackup{}
	for rows.Next() {
		var b VolumeBackup
		var c, l int64
		if err := rows.Scan(&b.UUID, &b.VolumeUUID, &b.Name, &b.Description, &b.Type, &b.State, &b.Status, &b.Size, &b.Metadata, &b.Mode, &b.UserTags,
			&b.GroupUUID, &b.VMInstanceUUID, &b.JobUUID, &c, &l); err != nil {
			return nil, err
		}
		b.Created, b.LastOp = tm(c), tm(l)
		b.Refs = []BackupStorageRef{}
		out = append(out, &b)
		byID[b.UUID] = &b
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return out, nil
	}
	ph := placeholders(len(out))
	ids := make([]any, len(out))
	for i, b := range out {
		ids[i] = b.UUID
	}
	rrows, err := d.db.QueryContext(ctx, `SELECT volume_backup_uuid, backup_storage_uuid, install_path, status, COALESCE(target, ''), create_date, last_op_date
		FROM volume_backup_refs WHERE volume_backup_uuid IN (`+ph+`)`, ids...)
	if err != nil {
		return nil, err
	}
	defer rrows.Close()
	for rrows.Next() {
		var r BackupStorageRef
		var c, l int64
		if err := rrows.Scan(&r.VolumeBackupUUID, &r.BackupStorageUUID, &r.InstallPath, &r.Status, &r.Target, &c, &l); err != nil {
			return nil, err
		}
		r.Created, r.LastOp = tm(c), tm(l)
		byID[r.VolumeBackupUUID].Refs = append(byID[r.VolumeBackupUUID].Refs, r)
	}
	return out, rrows.Err()
}

// GetVolumeBackup loads one backup with its refs, or ErrNotFound.
func (d *DB) GetVolumeBackup(ctx context.Context, uuid string) (*VolumeBackup, error) {
	got, err := d.loadBackups(ctx, " WHERE uuid = ?", uuid)
	if err != nil {
		return nil, err
	}
	if len(got) == 0 {
		return nil, ErrNotFound
	}
	return got[0], nil
}

// GetVolumeBackups loads the backups with the given uuids, in that order;
// one deleted meanwhile is left out.
func (d *DB) GetVolumeBackups(ctx context.Context, uuids []string) ([]*VolumeBackup, error) {
	out := make([]*VolumeBackup, 0, len(uuids))
	// SQLite binds at most 32766 arguments a statement.
	const batch = 10000
	for len(uuids) > 0 {
		n := min(len(uuids), batch)
		args := make([]any, n)
		for i, id := range uuids[:n] {
			args[i] = id
		}
		got, err := d.loadBackups(ctx, " WHERE uuid IN ("+placeholders(n)+")", args...)
		if err != nil {
			return nil, err
		}
		byID := make(map[string]*VolumeBackup, len(got))
		for _, b := range got {
			byID[b.UUID] = b
		}
		for _, id := range uuids[:n] {
			if b := byID[id]; b != nil {
				out = append(out, b)
			}
		}
		uuids = uuids[n:]
	}
	return out, nil
}

// CountBackupStorages returns how many backup storages are recorded.
func (d *DB) CountBackupStorages(ctx context.Context) (int, error) {
	var n int
	err := d.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM backup_storages`).Scan(&n)
	return n, err
}

// ListVolumes returns every volume.
func (d *DB) ListVolumes(ctx context.Context) ([]*Volume, error) {
	return d.volumes(ctx, ` ORDER BY create_date`)
}

// volumes loads the volumes a WHERE/ORDER clause of this package selects.
func (d *DB) volumes(ctx context.Context, clause string, args ...any) ([]*Volume, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT `+volumeCols+` FROM volumes`+clause, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Volume
	for rows.Next() {
		v, err := scanVolume(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// DeleteBackupStorageAndBackups removes a backup storage and the inventory
// of the backups stored on it, in one transaction.
func (d *DB) DeleteBackupStorageAndBackups(ctx context.Context, uuid string) error {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM volume_backups WHERE uuid IN
		(SELECT volume_backup_uuid FROM volume_backup_refs WHERE backup_storage_uuid = ?)`, uuid); err != nil {
		return fmt.Errorf("backup storage %s: %w", uuid, err)
	}
	r, err := tx.ExecContext(ctx, `DELETE FROM backup_storages WHERE uuid = ?`, uuid)
	if err != nil {
		return fmt.Errorf("backup storage %s: %w", uuid, err)
	}
	if n, _ := r.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return tx.Commit()
}

// UserTag is a user tag attached to a resource.
type UserTag struct {
	UUID, ResourceUUID, ResourceType, Tag string
	Created, LastOp                       time.Time
}

// GetUserTags loads the user tags with the given uuids, in that order.
func (d *DB) GetUserTags(ctx context.Context, uuids []string) ([]*UserTag, error) {
	out := make([]*UserTag, 0, len(uuids))
	for _, id := range uuids {
		var t UserTag
		var c, l int64
		err := d.db.QueryRowContext(ctx, `SELECT uuid, resource_uuid, resource_type, tag, create_date, last_op_date FROM user_tags WHERE uuid = ?`, id).
			Scan(&t.UUID, &t.ResourceUUID, &t.ResourceType, &t.Tag, &c, &l)
		if errors.Is(err, sql.ErrNoRows) {
			continue // deleted since the query
		}
		if err != nil {
			return nil, fmt.Errorf("user tag %s: %w", id, err)
		}
		t.Created, t.LastOp = tm(c), tm(l)
		out = append(out, &t)
	}
	return out, nil
}

// StorageTargets returns the distinct targets (JSON) other than its url
// that backups of a storage were ever written to.
func (d *DB) StorageTargets(ctx context.Context, storageUUID string) ([]string, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT target FROM storage_targets WHERE storage_uuid = ?
		UNION SELECT target FROM volume_backup_refs WHERE backup_storage_uuid = ? AND target IS NOT NULL ORDER BY 1`, storageUUID, storageUUID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// DeleteVolumeBackupRefs removes a backup's copies on the given storages
// (every copy when storageUUIDs is empty), and the backup itself once it
// has no copy left, in one transaction. It returns how many copies remain.
func (d *DB) DeleteVolumeBackupRefs(ctx context.Context, uuid string, storageUUIDs []string) (remaining int, err error) {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	if len(storageUUIDs) == 0 {
		_, err = tx.ExecContext(ctx, `DELETE FROM volume_backup_refs WHERE volume_backup_uuid = ?`, uuid)
	} else {
		args := []any{uuid}
		for _, s := range storageUUIDs {
			args = append(args, s)
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM volume_backup_refs WHERE volume_backup_uuid = ? AND backup_storage_uuid IN (`+placeholders(len(storageUUIDs))+`)`, args...)
	}
	if err != nil {
		return 0, fmt.Errorf("volume backup %s: %w", uuid, err)
	}
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM volume_backup_refs WHERE volume_backup_uuid = ?`, uuid).Scan(&remaining); err != nil {
		return 0, fmt.Errorf("volume backup %s: %w", uuid, err)
	}
	if remaining == 0 {
		if _, err := tx.ExecContext(ctx, `DELETE FROM volume_backups WHERE uuid = ?`, uuid); err != nil {
			return 0, fmt.Errorf("volume backup %s: %w", uuid, err)
		}
	}
	return remaining, tx.Commit()
}

// BackupsOnTarget lists the backups with a copy on a storage at target
// (the ref's target JSON; "" for the storage's own url).
func (d *DB) BackupsOnTarget(ctx context.Context, storageUUID, target string) ([]string, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT volume_backup_uuid FROM volume_backup_refs WHERE backup_storage_uuid = ? AND COALESCE(target, '') = ? ORDER BY 1`, storageUUID, target)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// AddVolumeBackupRef records one more copy of a known backup, Ready, on a
// storage (at target, "" for the storage's url); a copy already recorded
// there is left as it is.
func (d *DB) AddVolumeBackupRef(ctx context.Context, ref BackupStorageRef) error {
	now := ns(d.now())
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO volume_backup_refs(volume_backup_uuid, backup_storage_uuid, install_path, status, target, create_date, last_op_date)
		VALUES(?, ?, ?, ?, ?, ?, ?)`, ref.VolumeBackupUUID, ref.BackupStorageUUID, ref.InstallPath, ref.Status, nullIfEmpty(ref.Target), now, now); err != nil {
		return fmt.Errorf("volume backup %s: %w", ref.VolumeBackupUUID, err)
	}
	if ref.Target != "" {
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO storage_targets(storage_uuid, target, create_date) VALUES(?, ?, ?)`,
			ref.BackupStorageUUID, ref.Target, now); err != nil {
			return fmt.Errorf("volume backup %s: %w", ref.VolumeBackupUUID, err)
		}
	}
	return tx.Commit()
}

// SetVolumeVM attaches a volume to a VM ("" detaches it) and sets its type.
func (d *DB) SetVolumeVM(ctx context.Context, uuid, vm string, typ VolumeType) error {
	r, err := d.db.ExecContext(ctx, `UPDATE volumes SET vm_instance_uuid = ?, type = ?, last_op_date = ? WHERE uuid = ?`, nullIfEmpty(vm), typ, ns(d.now()), uuid)
	if err != nil {
		return fmt.Errorf("volume %s: %w", uuid, err)
	}
	if n, _ := r.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// VMVolumes lists the volumes attached to a VM, the root volume first.
func (d *DB) VMVolumes(ctx context.Context, vm string) ([]*Volume, error) {
	return d.volumes(ctx, ` WHERE vm_instance_uuid = ? ORDER BY type = 'Root' DESC, create_date, uuid`, vm)
}

// GroupBackups lists the backups of one VM backup, the root volume's first.
func (d *DB) GroupBackups(ctx context.Context, group string) ([]*VolumeBackup, error) {
	got, err := d.loadBackups(ctx, " WHERE group_uuid = ?", group)
	if err != nil {
		return nil, err
	}
	sort.SliceStable(got, func(i, j int) bool { return got[i].Type == VolumeRoot && got[j].Type != VolumeRoot })
	return got, nil
}
