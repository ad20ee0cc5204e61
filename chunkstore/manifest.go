package chunkstore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Manifest describes one backup: every chunk of the volume in order, so each
// backup is logically full whatever its mode.
type Manifest struct {
	Version   int    `json:"version"`
	ID        string `json:"id"`
	VolumeID  string `json:"volumeId"`
	Size      int64  `json:"size"`
	ChunkSize int    `json:"chunkSize"`
	// Parent is the backup this one was built on ("" for none). Chunks not
	// read for this backup were taken from the parent's manifest.
	Parent string `json:"parent,omitempty"`
	// Mode is "full" (every chunk read) or "incremental" (only changed
	// chunks read).
	Mode     Mode              `json:"mode"`
	Started  time.Time         `json:"started"`
	Finished time.Time         `json:"finished"`
	Stats    Stats             `json:"stats"`
	Meta     map[string]string `json:"meta,omitempty"`
	// Chunks holds one key per chunk-size slice of the volume; the last
	// may be shorter. ZeroKey ("zero") marks an all-zero slice.
	Chunks []Key `json:"chunks"`
}

// Stats counts what a backup did.
type Stats struct {
	BytesRead     int64 `json:"bytesRead"`     // read from the volume
	BytesZero     int64 `json:"bytesZero"`     // all-zero: read and found so, or holes of a sparse file (not read)
	BytesNew      int64 `json:"bytesNew"`      // raw bytes of chunks stored by this backup
	BytesStored   int64 `json:"bytesStored"`   // encoded bytes written to the store
	ChunksTotal   int   `json:"chunksTotal"`   // len(Chunks)
	ChunksRead    int   `json:"chunksRead"`    // chunks read from the volume
	ChunksZero    int   `json:"chunksZero"`    // read chunks that were all-zero
	ChunksNew     int   `json:"chunksNew"`     // chunks this backup stored
	ChunksDedup   int   `json:"chunksDedup"`   // read chunks already in the repository
	ChunksReused  int   `json:"chunksReused"`  // chunks taken from the parent unread
	DurationNanos int64 `json:"durationNanos"` // wall time of the backup
}

// ChunkCount returns how many chunks a volume of size bytes has.
func ChunkCount(size int64, chunkSize int) int {
	return int((size + int64(chunkSize) - 1) / int64(chunkSize))
}

// Validate checks the manifest's internal consistency.
func (m *Manifest) Validate() error {
	if m.Version != ManifestVersion {
		return fmt.Errorf("manifest %s: format version %d, this build reads %d", m.ID, m.Version, ManifestVersion)
	}
	if err := ValidID(m.ID); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if m.Size < 0 {
		return fmt.Errorf("manifest %s: negative size %d", m.ID, m.Size)
	}
	if err := ValidChunkSize(m.ChunkSize); err != nil {
		return fmt.Errorf("manifest %s: %w", m.ID, err)
	}
	if want := ChunkCount(m.Size, m.ChunkSize); len(m.Chunks) != want {
		return fmt.Errorf("manifest %s: %d chunks, a %d-byte volume has %d", m.ID, len(m.Chunks), m.Size, want)
	}
	if m.Parent != "" {
		if err := ValidID(m.Parent); err != nil {
			return fmt.Errorf("manifest %s: parent: %w", m.ID, err)
		}
	}
	return nil
}

// ChunkLen returns the length of chunk i.
func (m *Manifest) ChunkLen(i int) int {
	off := int64(i) * int64(m.ChunkSize)
	return int(min(int64(m.ChunkSize), m.Size-off))
}

const manifestMagic = "VBM1"

// encodeManifest serialises m as the magic followed by a zstd frame (with its
// content checksum) of the JSON document.
func encodeManifest(enc *zstd.Encoder, m *Manifest) ([]byte, error) {
	js, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", m.ID, err)
	}
	return enc.EncodeAll(js, []byte(manifestMagic)), nil
}

func decodeManifest(dec *zstd.Decoder, id string, b []byte) (*Manifest, error) {
	if !bytes.HasPrefix(b, []byte(manifestMagic)) {
		return nil, fmt.Errorf("manifest %s: bad magic", id)
	}
	js, err := dec.DecodeAll(b[len(manifestMagic):], nil)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", id, err)
	}
	var m Manifest
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", id, err)
	}
	if m.ID != id {
		return nil, fmt.Errorf("manifest %s: names itself %q", id, m.ID)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Mode is how a backup reads its volume.
type Mode string

// Backup modes: a manifest records full or incremental; a request may
// also ask for auto (incremental when it can be trusted, else full).
const (
	ModeFull        Mode = "full"
	ModeIncremental Mode = "incremental"
	ModeAuto        Mode = "auto"
)

// ParseMode reads a requested mode; "" is ModeAuto.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case "":
		return ModeAuto, nil
	case ModeFull, ModeIncremental, ModeAuto:
		return m, nil
	}
	return "", fmt.Errorf("mode %q: want full, incremental or auto", s)
}
