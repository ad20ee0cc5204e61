package dataplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"
)

// The state file: JSON, written with temp file + fsync + rename.
type volumeState struct {
	Version     int          `json:"version"`
	Volume      string       `json:"volume"`
	Size        int64        `json:"size"`
	Granularity int64        `json:"granularity"`
	InUse       bool         `json:"inUse"`
	ModTime     time.Time    `json:"modTime,omitempty"`
	Chains      []chainState `json:"chains"`
}

type chainState struct {
	Name       string `json:"name"`
	LastBackup string `json:"lastBackup,omitempty"`
	Invalid    string `json:"invalid,omitempty"`
	Bitmap     []byte `json:"bitmap"`
}

func (v *Volume) loadState() error {
	b, err := os.ReadFile(v.statePath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("volume %s: read changed-block state: %w", v.ID, err)
	}
	var st volumeState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("volume %s: changed-block state %s: %w", v.ID, v.statePath, err)
	}
	reason := ""
	switch {
	case st.InUse:
		reason = "the volume was not closed cleanly (crash or kill), so its changed-block map may have missed writes"
	case st.Size != v.size:
		reason = fmt.Sprintf("the volume's size changed from %d to %d bytes while it was not served", st.Size, v.size)
	case !v.block && !st.ModTime.IsZero():
		if fi, err := v.f.Stat(); err == nil && !fi.ModTime().Equal(st.ModTime) {
			reason = "the volume's file was modified while it was not served"
		}
	}
	for _, cs := range st.Chains {
		bm, err := NewDirtyMap(v.size, v.gran)
		if err != nil {
			return err
		}
		c := &chain{bitmap: bm, lastBackup: cs.LastBackup, invalid: cs.Invalid}
		if reason == "" && st.Granularity == v.gran {
			if err := bm.UnmarshalBinary(cs.Bitmap); err != nil {
				c.invalid = "the saved changed-block map is unreadable: " + err.Error()
			}
		} else if reason != "" {
			c.invalid = reason
		} else {
			c.invalid = "the changed-block map granularity changed"
		}
		v.chains[cs.Name] = c
	}
	return nil
}

// saveState writes the state file while the volume is in use. Writers
// keep running: the read lock only keeps the chain list still, and the
// maps' bits are read atomically.
func (v *Volume) saveState(inUse bool) error {
	if v.statePath == "" {
		return nil
	}
	v.gate.RLock()
	defer v.gate.RUnlock()
	return v.saveStateLocked(inUse)
}

// saveStateLocked writes the state file; the caller holds gate.
func (v *Volume) saveStateLocked(inUse bool) error {
	v.stateMu.Lock()
	defer v.stateMu.Unlock()
	st := volumeState{Version: 1, Volume: v.ID, Size: v.size, Granularity: v.gran, InUse: inUse}
	if fi, err := v.f.Stat(); err == nil && !inUse {
		st.ModTime = fi.ModTime()
	}
	for name, c := range v.chains {
		b, _ := c.bitmap.MarshalBinary()
		st.Chains = append(st.Chains, chainState{Name: name, LastBackup: c.lastBackup, Invalid: c.invalid, Bitmap: b})
	}
	sort.Slice(st.Chains, func(i, j int) bool { return st.Chains[i].Name < st.Chains[j].Name })
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(v.statePath, b); err != nil {
		return fmt.Errorf("volume %s: save changed-block state: %w", v.ID, err)
	}
	return nil
}
