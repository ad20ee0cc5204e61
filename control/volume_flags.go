package control

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
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

// ParseVolumeFlag parses UUID=PATH.
func ParseVolumeFlag(s string) (id, path string, err error) {
	id, path, ok := strings.Cut(s, "=")
	if !ok || path == "" {
		return "", "", fmt.Errorf("--volume %q: want UUID=PATH", s)
	}
	if err := ValidVolumeID(id); err != nil {
		return "", "", fmt.Errorf("--volume %q: %w", s, err)
	}
	return id, path, nil
}

// ParseVolumeFlags parses repeated UUID=PATH flags; a UUID given twice is
// an error.
func ParseVolumeFlags(flags []string) (map[string]string, error) {
	vols := map[string]string{}
	for _, f := range flags {
		id, path, err := ParseVolumeFlag(f)
		if err != nil {
			return nil, err
		}
		if _, dup := vols[id]; dup {
			return nil, fmt.Errorf("--volume %s given twice", id)
		}
		vols[id] = path
	}
	return vols, nil
}
