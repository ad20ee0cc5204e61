package control

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/volback/volback/chunkstore/target"
)

// MaxParallelism bounds volumeLiveBackup::parallelismDegree.
const MaxParallelism = 64

// FSInfo is the target an fsInfo tag names.
type FSInfo struct {
	Type    string // "nfs" or "s3"
	URL     string
	Options string // comma-separated, driver-specific; may be empty
}

// BackupTags is what a backup's system tags ask for. Zero values mean the
// defaults: the backup storage's own target, one worker per CPU, any
// source address.
type BackupTags struct {
	FSInfo      *FSInfo
	Parallelism int
	NetworkCIDR netip.Prefix
	// Key names the key file (under the daemon's state directory) of an
	// encrypted repository: the storage's own, or the fsInfo target's.
	Key string
}

// TagError reports a system tag that cannot be used.
type TagError struct {
	Tag    string
	Reason string
}

// Error quotes the tag with anything that may be a credential redacted;
// an unknown tag only by its first word (it may be anything at all).
func (e *TagError) Error() string {
	tag := e.Tag
	if e.Reason == reasonUnknownTag {
		// Its words, not its value: "backup::network::cird::…".
		if i := strings.LastIndex(tag, "::"); i >= 0 {
			tag = tag[:i+2] + "…"
		} else if len(tag) > 16 {
			tag = tag[:8] + "…"
		}
	}
	return fmt.Sprintf("system tag %q: %s", target.Redact(tag), target.Redact(e.Reason))
}

const reasonUnknownTag = "unknown system tag"

const (
	fsInfoPrefix      = "fsInfo::type::"
	parallelismPrefix = "volumeLiveBackup::parallelismDegree::"
	cidrPrefix        = "backup::network::cidr::"
	keyPrefix         = "encryptionKey::"
)

// ParseBackupTags parses CreateVolumeBackup's system tags. Each kind of tag
// may appear once.
func ParseBackupTags(tags []string) (BackupTags, error) {
	var bt BackupTags
	seen := map[string]bool{}
	once := func(kind, tag string) error {
		if seen[kind] {
			return &TagError{Tag: tag, Reason: "given more than once"}
		}
		seen[kind] = true
		return nil
	}
	for _, tag := range tags {
		switch {
		case strings.HasPrefix(tag, fsInfoPrefix):
			if err := once("fsInfo", tag); err != nil {
				return bt, err
			}
			fi, err := parseFSInfo(tag)
			if err != nil {
				return bt, err
			}
			bt.FSInfo = fi
		case strings.HasPrefix(tag, parallelismPrefix):
			if err := once("parallelism", tag); err != nil {
				return bt, err
			}
			v := strings.TrimPrefix(tag, parallelismPrefix)
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > MaxParallelism || v != strconv.Itoa(n) {
				return bt, &TagError{Tag: tag, Reason: fmt.Sprintf("parallelismDegree must be an integer from 1 to %d", MaxParallelism)}
			}
			bt.Parallelism = n
		case strings.HasPrefix(tag, cidrPrefix):
			if err := once("cidr", tag); err != nil {
				return bt, err
			}
			p, err := netip.ParsePrefix(strings.TrimPrefix(tag, cidrPrefix))
			if err != nil {
				return bt, &TagError{Tag: tag, Reason: "not a CIDR such as 10.0.0.0/8"}
			}
			bt.NetworkCIDR = p.Masked()
		case strings.HasPrefix(tag, keyPrefix):
			if err := once("key", tag); err != nil {
				return bt, err
			}
			name := strings.TrimPrefix(tag, keyPrefix)
			if err := validKeyName(name); err != nil {
				return bt, &TagError{Tag: tag, Reason: err.Error()}
			}
			bt.Key = name
		default:
			return bt, &TagError{Tag: tag, Reason: reasonUnknownTag}
		}
	}
	return bt, nil
}

// parseFSInfo parses fsInfo::type::TYPE::url::URL[::options::OPTIONS]. The
// URL is found between the markers rather than by splitting on "::", so an
// IPv6 literal such as [::1] survives.
func parseFSInfo(tag string) (*FSInfo, error) {
	rest := strings.TrimPrefix(tag, fsInfoPrefix)
	typ, rest, ok := strings.Cut(rest, "::url::")
	if !ok {
		return nil, &TagError{Tag: tag, Reason: "want fsInfo::type::TYPE::url::URL::options::OPTIONS"}
	}
	switch typ {
	case "nfs", "s3":
	default:
		return nil, &TagError{Tag: tag, Reason: fmt.Sprintf("unknown fsInfo type %q (want nfs or s3)", typ)}
	}
	url, opts := rest, ""
	if i := strings.LastIndex(rest, "::options::"); i >= 0 {
		url, opts = rest[:i], rest[i+len("::options::"):]
	}
	if url == "" {
		return nil, &TagError{Tag: tag, Reason: "empty url"}
	}
	if strings.ContainsAny(url, " \t\n") || strings.ContainsAny(opts, " \t\n") {
		return nil, &TagError{Tag: tag, Reason: "url and options may not contain white space"}
	}
	if typ == "nfs" && !strings.Contains(url, ":/") {
		return nil, &TagError{Tag: tag, Reason: "nfs url must be HOST:/EXPORT[/PATH]"}
	}
	for _, o := range strings.Split(opts, ",") {
		if opts != "" && o == "" {
			return nil, &TagError{Tag: tag, Reason: "empty option in " + strconv.Quote(opts)}
		}
	}
	// Options and URL forms are the target's business: check them now,
	// so a bad tag is refused before any job starts.
	if _, err := target.FromFSInfo(typ, url, opts); err != nil {
		return nil, &TagError{Tag: tag, Reason: err.Error()}
	}
	return &FSInfo{Type: typ, URL: url, Options: opts}, nil
}
