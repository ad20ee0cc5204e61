package control

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/control/inventory"
)

// volumeIDPattern is what a volume id (its NBD export name) may be: a
// ZStack uuid, or a name of letters, digits, '.', '_' and '-'.
var volumeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidVolumeID checks a volume id given on the command line.
func ValidVolumeID(id string) error {
	if !volumeIDPattern.MatchString(id) {
		return errors.New("a volume id must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	return nil
}

// VolumeSpec is a volume given on the command line: its file or device,
// and optionally its ZStack type and the VM it belongs to.
type VolumeSpec struct {
	Path string
	Type inventory.VolumeType // "" for the default, Root
	VM   string               // the vmInstanceUuid; "" for none
}

// ParseVolumeFlag parses UUID=PATH[,type=Root|Data][,vm=VMUUID]. The
// suffixes are read from the end, so a path may hold commas.
func ParseVolumeFlag(s string) (id string, spec VolumeSpec, err error) {
	id, rest, ok := strings.Cut(s, "=")
	if !ok || rest == "" {
		return "", spec, fmt.Errorf("--volume %q: want UUID=PATH[,type=Root|Data][,vm=VMUUID]", s)
	}
	if err := ValidVolumeID(id); err != nil {
		return "", spec, fmt.Errorf("--volume %q: %w", s, err)
	}
	for {
		i := strings.LastIndex(rest, ",")
		if i < 0 {
			break
		}
		k, v, ok := strings.Cut(rest[i+1:], "=")
		if !ok || (k != "type" && k != "vm") {
			break
		}
		switch k {
		case "type":
			switch t := inventory.VolumeType(v); t {
			case inventory.VolumeRoot, inventory.VolumeData:
				spec.Type = t
			default:
				return "", spec, fmt.Errorf("--volume %q: type %q: want Root or Data", s, v)
			}
		case "vm":
			if err := chunkstore.ValidID(v); err != nil {
				return "", spec, fmt.Errorf("--volume %q: vm: %w", s, err)
			}
			spec.VM = v
		}
		rest = rest[:i]
	}
	if rest == "" {
		return "", spec, fmt.Errorf("--volume %q: no path", s)
	}
	spec.Path = rest
	return id, spec, nil
}

// ParseVolumeFlags parses repeated --volume flags; a UUID given twice is
// an error.
func ParseVolumeFlags(flags []string) (map[string]VolumeSpec, error) {
	vols := map[string]VolumeSpec{}
	for _, f := range flags {
		id, spec, err := ParseVolumeFlag(f)
		if err != nil {
			return nil, err
		}
		if _, dup := vols[id]; dup {
			return nil, fmt.Errorf("--volume %s given twice", id)
		}
		vols[id] = spec
	}
	return vols, nil
}
