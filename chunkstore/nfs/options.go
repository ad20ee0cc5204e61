package nfs

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Options configures a Store. ParseOptions fills it from the kernel's NFS
// mount options, so an fsInfo tag means what it would mean to mount(8).
type Options struct {
	Host string // server name or address
	Path string // absolute path on the server: the export, maybe deeper

	RSize, WSize int           // bytes per READ / WRITE call
	Port         int           // NFS port; 0 = ask the portmapper
	MountPort    int           // MOUNT port; 0 = ask the portmapper
	Timeout      time.Duration // per call (timeo, in tenths of a second)
	Retrans      int           // sends of a call before it fails
	Conns        int           // TCP connections (nconnect)
	ResvPort     bool          // bind a port below 1024 (root only)
	// LocalAddr, if valid, is the source address of every connection.
	LocalAddr netip.Addr
}

// Defaults when the options do not say: the kernel's for sizes and
// retries; a shorter timeo than its 60 s, so a backup to a dead server
// fails in about a minute instead of several.
const (
	DefaultIOSize  = 1 << 20
	defaultTimeo   = 150 // tenths of a second
	defaultRetrans = 3
	defaultConns   = 4
	minIOSize      = 4096
	maxIOSize      = 1 << 20
)

// noAction lists mount options that are valid and need nothing from a
// user-space client that holds no locks, caches nothing across calls and
// always fails a call after retrans sends (the kernel's soft mode).
var noAction = map[string]bool{
	"nolock": true, "lock": true, "hard": true, "soft": true, "softerr": true, "intr": true, "nointr": true,
	"rw": true, "sync": true, "async": true, "atime": true, "noatime": true, "relatime": true,
	"nodiratime": true, "diratime": true, "ac": true, "noac": true, "cto": true, "nocto": true,
	"fg": true, "bg": true, "fsc": true, "nofsc": true, "sharecache": true, "nosharecache": true,
	"acl": true, "noacl": true, "rdirplus": true, "nordirplus": true, "_netdev": true, "defaults": true,
	"auto": true, "noauto": true, "nosuid": true, "suid": true, "nodev": true, "dev": true, "noexec": true, "exec": true,
}

// noActionValued lists options with a value that need nothing.
var noActionValued = map[string]bool{
	"actimeo": true, "acregmin": true, "acregmax": true, "acdirmin": true, "acdirmax": true,
	"retry": true, "namlen": true, "lookupcache": true, "local_lock": true, "clientaddr": true,
	"addr": true, "mountaddr": true, "fsc": true,
}

// ParseURL splits HOST:/PATH (the fsInfo form; [IPv6]:/PATH too).
func ParseURL(u string) (host, path string, err error) {
	i := strings.Index(u, ":/")
	if strings.HasPrefix(u, "[") {
		j := strings.Index(u, "]:/")
		if j < 0 {
			return "", "", fmt.Errorf("nfs url %q: want HOST:/EXPORT[/PATH]", u)
		}
		i = j + 1
		host = u[1:j]
	} else if i > 0 {
		host = u[:i]
	}
	if i <= 0 || host == "" {
		return "", "", fmt.Errorf("nfs url %q: want HOST:/EXPORT[/PATH]", u)
	}
	if !validHost(host) {
		return "", "", fmt.Errorf("nfs url %q: %q is neither an IP address nor a host name", u, host)
	}
	path = "/" + strings.Trim(u[i+2:], "/")
	for _, seg := range strings.Split(strings.Trim(path, "/"), "/") {
		if seg == "." || seg == ".." {
			return "", "", fmt.Errorf("nfs url %q: '.' and '..' are not allowed in the path", u)
		}
	}
	return host, path, nil
}

// ParseOptions reads comma-separated kernel mount options. It refuses, by
// name, options this client cannot honour and options it does not know.
func ParseOptions(s string) (Options, error) {
	o := Options{Timeout: defaultTimeo * 100 * time.Millisecond, Retrans: defaultRetrans, Conns: defaultConns,
		RSize: DefaultIOSize, WSize: DefaultIOSize, ResvPort: true}
	if s == "" {
		return o, nil
	}
	var unknown []string
	for _, opt := range strings.Split(s, ",") {
		if opt == "" {
			return o, fmt.Errorf("nfs options %q: empty option", s)
		}
		k, v, hasVal := strings.Cut(opt, "=")
		num := func(lo, hi int) (int, error) {
			n, err := strconv.Atoi(v)
			if !hasVal || err != nil || n < lo || n > hi {
				return 0, fmt.Errorf("nfs option %s: want an integer from %d to %d", opt, lo, hi)
			}
			return n, nil
		}
		var err error
		switch {
		case k == "vers" || k == "nfsvers":
			if v != "3" {
				return o, fmt.Errorf("nfs option %s: only NFS version 3 is supported", opt)
			}
		case k == "mountvers":
			if v != "3" {
				return o, fmt.Errorf("nfs option %s: only MOUNT version 3 is supported", opt)
			}
		case k == "proto" || k == "mountproto":
			if v != "tcp" {
				return o, fmt.Errorf("nfs option %s: only tcp is supported", opt)
			}
		case k == "tcp" && !hasVal:
		case k == "udp" && !hasVal:
			return o, fmt.Errorf("nfs option udp: only tcp is supported")
		case k == "sec":
			if v != "sys" {
				return o, fmt.Errorf("nfs option %s: only sec=sys is supported", opt)
			}
		case k == "ro" && !hasVal:
			return o, fmt.Errorf("nfs option ro: a backup target must be writable")
		case k == "rsize":
			o.RSize, err = num(minIOSize, maxIOSize)
		case k == "wsize":
			o.WSize, err = num(minIOSize, maxIOSize)
		case k == "port":
			o.Port, err = num(0, 65535)
		case k == "mountport":
			o.MountPort, err = num(0, 65535)
		case k == "timeo":
			var n int
			n, err = num(1, 6000)
			o.Timeout = time.Duration(n) * 100 * time.Millisecond
		case k == "retrans":
			o.Retrans, err = num(0, 100)
			o.Retrans++ // retrans counts resends; we count sends
		case k == "nconnect":
			o.Conns, err = num(1, 16)
		case k == "resvport" && !hasVal:
			o.ResvPort = true
		case k == "noresvport" && !hasVal:
			o.ResvPort = false
		case !hasVal && noAction[k], hasVal && noActionValued[k]:
		default:
			unknown = append(unknown, opt)
		}
		if err != nil {
			return o, err
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return o, fmt.Errorf("nfs options not supported: %s", strings.Join(unknown, ", "))
	}
	return o, nil
}

func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if len(h) == 0 || len(h) > 253 || strings.HasPrefix(h, "-") || strings.HasPrefix(h, ".") {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}
