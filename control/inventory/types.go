package inventory

// State is a resource's administrative state, as ZStack spells it.
type State string

// States.
const (
	StateEnabled  State = "Enabled"
	StateDisabled State = "Disabled"
)

// Status is where a resource is in its life, as ZStack spells it.
type Status string

// Statuses of volumes, volume backups and their storage references.
const (
	StatusCreating  Status = "Creating"
	StatusReady     Status = "Ready"
	StatusRestoring Status = "Restoring"
	// StatusCorrupt is a backup whose verification found a bad or missing
	// chunk: it is not restored from, nor a parent of an incremental.
	StatusCorrupt Status = "Corrupt"
)

// VolumeType is ZStack's volume type.
type VolumeType string

// Volume types.
const (
	VolumeRoot VolumeType = "Root"
	VolumeData VolumeType = "Data"
)

// StorageImageStore is the type of every backup storage volback records.
const StorageImageStore = "ImageStoreBackupStorage"

// JobState is where an async job is.
type JobState string

// Job states.
const (
	JobRunning   JobState = "running"
	JobSucceeded JobState = "succeeded"
	JobFailed    JobState = "failed"
)
