package target

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/volback/volback/chunkstore"
	"github.com/volback/volback/chunkstore/local"
	"github.com/volback/volback/chunkstore/nfs"
	s3store "github.com/volback/volback/chunkstore/s3"
)

// Kinds of target.
const (
	Local = "local"
	NFS   = "nfs"
	S3    = "s3"
)

// Spec names a target. It holds no secret: credentials come from the
// environment, a profile or the daemon's configuration, so a Spec may be
// logged and stored in the inventory.
type Spec struct {
	Kind string `json:"kind"`
	// URL: a directory (local), HOST:/PATH (nfs), or s3://BUCKET/PREFIX
	// or http(s)://ENDPOINT/BUCKET/PREFIX (s3).
	URL string `json:"url"`
	// Options: kernel mount options (nfs) or region=,endpoint=,
	// path-style,storage-class=,profile=,timeout=,instance-metadata,
	// create=claim|conditional (s3);
	// comma-separated.
	Options string `json:"options,omitempty"`
	// Key names the daemon's key file that opens the repository if it is
	// encrypted (never the key itself).
	Key string `json:"key,omitempty"`
}

// Env is what opening a target needs besides its Spec.
type Env struct {
	// LocalAddr, if valid, is the source address of target connections.
	LocalAddr netip.Addr
	// S3 credentials from the daemon's configuration; empty = the
	// standard AWS chain (or the profile option).
	S3AccessKeyID, S3SecretAccessKey string
}

// FromFSInfo checks an fsInfo tag's parts and returns the Spec.
func FromFSInfo(kind, u, options string) (Spec, error) {
	s := Spec{Kind: kind, URL: u, Options: options}
	return s, s.Check()
}

// Check validates the spec without connecting. Its errors quote no
// credential: a spec carrying one is refused by name (ErrCredentials).
func (s Spec) Check() error {
	if err := s.checkCredentials(); err != nil {
		return err
	}
	return redact(s.check())
}

func (s Spec) check() error {
	switch s.Kind {
	case Local:
		if s.URL == "" || !strings.HasPrefix(s.URL, "/") {
			return fmt.Errorf("local target %q: want an absolute directory", s.URL)
		}
		if s.Options != "" {
			return fmt.Errorf("local target %q: takes no options", s.URL)
		}
		return nil
	case NFS:
		_, err := s.nfsOptions()
		return err
	case S3:
		_, err := s.s3Options()
		return err
	}
	return fmt.Errorf("unknown target kind %q (want local, nfs or s3)", s.Kind)
}

func (s Spec) nfsOptions() (nfs.Options, error) {
	host, path, err := nfs.ParseURL(s.URL)
	if err != nil {
		return nfs.Options{}, err
	}
	o, err := nfs.ParseOptions(s.Options)
	if err != nil {
		return o, err
	}
	o.Host, o.Path = host, path
	return o, nil
}

func (s Spec) s3Options() (s3store.Options, error) {
	var o s3store.Options
	u, err := url.Parse(s.URL)
	if err != nil {
		return o, fmt.Errorf("s3 url %q: %w", s.URL, err)
	}
	switch u.Scheme {
	case "s3":
		o.Bucket, o.Prefix = u.Host, strings.Trim(u.Path, "/")
	case "http", "https":
		parts := strings.SplitN(strings.Trim(u.Path, "/"), "/", 2)
		o.Endpoint, o.Bucket, o.PathStyle = u.Scheme+"://"+u.Host, parts[0], true
		if len(parts) == 2 {
			o.Prefix = parts[1]
		}
	default:
		return o, fmt.Errorf("s3 url %q: want s3://BUCKET/PREFIX or http(s)://ENDPOINT/BUCKET/PREFIX", s.URL)
	}
	if u.User != nil {
		return o, fmt.Errorf("s3 url: credentials do not belong in a url (they would be logged); use the AWS environment, a profile or the daemon's configuration")
	}
	if o.Bucket == "" || u.RawQuery != "" || u.Fragment != "" {
		return o, fmt.Errorf("s3 url %q: want s3://BUCKET/PREFIX or http(s)://ENDPOINT/BUCKET/PREFIX", s.URL)
	}
	if s.Options == "" {
		return o, nil
	}
	var unknown []string
	for _, opt := range strings.Split(s.Options, ",") {
		k, v, hasVal := strings.Cut(opt, "=")
		switch {
		case opt == "":
			return o, fmt.Errorf("s3 options %q: empty option", s.Options)
		case k == "region" && hasVal && v != "":
			o.Region = v
		case k == "endpoint" && hasVal:
			e, err := url.Parse(v)
			if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
				return o, fmt.Errorf("s3 option %s: want an http(s) URL", opt)
			}
			o.Endpoint = v
		case (k == "path-style" || k == "pathStyle" || k == "use-path-style") && (!hasVal || v == "true" || v == "false"):
			o.PathStyle = !hasVal || v == "true"
		case (k == "storage-class" || k == "storageClass") && hasVal && v != "":
			o.StorageClass = v
		case k == "profile" && hasVal && v != "":
			o.Profile = v
		case (k == "instance-metadata" || k == "imds") && !hasVal:
			o.InstanceMetadata = true
		case k == "create" && (v == "claim" || v == "conditional"):
			o.ConditionalOnly = v == "conditional"
		case k == "timeout" && hasVal:
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return o, fmt.Errorf("s3 option %s: want a positive duration such as 30s", opt)
			}
			o.Timeout = d
		case k == "access-key" || k == "secret-key" || k == "accessKey" || k == "secretKey":
			return o, fmt.Errorf("s3 option %s: credentials do not belong in a tag (tags are logged and stored); use the AWS environment, a profile or the daemon's configuration", k)
		default:
			unknown = append(unknown, opt)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return o, fmt.Errorf("s3 options not supported: %s", strings.Join(unknown, ", "))
	}
	return o, nil
}

// ParseURL reads the CLI's repository forms: a directory path;
// nfs://HOST[:PORT]/PATH[?OPTIONS]; s3://BUCKET/PREFIX[?OPTIONS]; where
// OPTIONS are the same options as the fsInfo tag's, as query parameters
// (?vers=3&nolock or ?endpoint=http://h:9000&region=r).
//
// A URL carrying a credential (user info, a secret-named option) is
// refused with ErrCredentials, and no error quotes one.
func ParseURL(s string) (Spec, error) {
	if hasUserInfo(s) {
		return Spec{}, fmt.Errorf("repository: user info in its URL: %w", ErrCredentials)
	}
	if _, q, ok := strings.Cut(s, "?"); ok {
		if v, err := url.ParseQuery(q); err == nil {
			if err := validateQuery(v); err != nil {
				return Spec{}, fmt.Errorf("repository: %w", err)
			}
		}
	}
	sp, err := parseURL(s)
	return sp, redact(err)
}

func parseURL(s string) (Spec, error) {
	switch {
	case strings.HasPrefix(s, "nfs://"):
		u, err := url.Parse(s)
		if err != nil {
			return Spec{}, fmt.Errorf("repository %q: %w", s, err)
		}
		opts := queryOptions(u.Query())
		host := u.Hostname()
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		if p := u.Port(); p != "" {
			opts = append([]string{"port=" + p}, opts...)
		}
		sp := Spec{Kind: NFS, URL: host + ":" + u.Path, Options: strings.Join(opts, ",")}
		return sp, sp.Check()
	case strings.HasPrefix(s, "s3://"):
		u, err := url.Parse(s)
		if err != nil {
			return Spec{}, fmt.Errorf("repository %q: %w", s, err)
		}
		opts := queryOptions(u.Query())
		u.RawQuery = ""
		sp := Spec{Kind: S3, URL: u.String(), Options: strings.Join(opts, ",")}
		return sp, sp.Check()
	case strings.Contains(s, "://"):
		return Spec{}, fmt.Errorf("repository %q: want a directory, nfs://HOST/PATH or s3://BUCKET/PREFIX", s)
	case s == "":
		return Spec{}, errors.New("repository: empty; want a directory, nfs://HOST/PATH or s3://BUCKET/PREFIX")
	}
	abs, err := filepath.Abs(s)
	if err != nil {
		return Spec{}, fmt.Errorf("repository %q: %w", s, err)
	}
	sp := Spec{Kind: Local, URL: abs}
	return sp, sp.Check()
}

func queryOptions(q url.Values) []string {
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var opts []string
	for _, k := range keys {
		for _, v := range q[k] {
			if v == "" {
				opts = append(opts, k)
			} else {
				opts = append(opts, k+"="+v)
			}
		}
	}
	return opts
}

// String returns the spec in the CLI's URL form, which ParseURL reads
// back: what the inventory's installPath and the log show.
func (s Spec) String() string {
	switch s.Kind {
	case NFS:
		host, path, err := nfs.ParseURL(s.URL)
		if err != nil {
			return "nfs://" + s.URL
		}
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		return "nfs://" + host + path + optionQuery(s.Options)
	case S3:
		o, err := s.s3Options()
		if err != nil {
			return s.URL
		}
		var opts []string
		if strings.HasPrefix(s.URL, "s3://") {
			return s.URL + optionQuery(s.Options)
		}
		// http(s)://endpoint/bucket/prefix: say it as s3:// with options.
		opts = append(opts, "endpoint="+o.Endpoint, "path-style")
		if s.Options != "" {
			opts = append(opts, s.Options)
		}
		u := "s3://" + o.Bucket
		if o.Prefix != "" {
			u += "/" + o.Prefix
		}
		return u + optionQuery(strings.Join(opts, ","))
	}
	return s.URL
}

func optionQuery(opts string) string {
	if opts == "" {
		return ""
	}
	q := make([]string, 0)
	for _, o := range strings.Split(opts, ",") {
		k, v, ok := strings.Cut(o, "=")
		if ok {
			q = append(q, url.QueryEscape(k)+"="+url.QueryEscape(v))
		} else {
			q = append(q, url.QueryEscape(k))
		}
	}
	return "?" + strings.Join(q, "&")
}

// Open connects to the target and returns its store.
func Open(ctx context.Context, s Spec, env Env) (chunkstore.Store, error) {
	switch s.Kind {
	case Local:
		return local.Open(s.URL)
	case NFS:
		o, err := s.nfsOptions()
		if err != nil {
			return nil, err
		}
		o.LocalAddr = env.LocalAddr
		return nfs.Open(ctx, o)
	case S3:
		o, err := s.s3Options()
		if err != nil {
			return nil, err
		}
		o.LocalAddr = env.LocalAddr
		if o.Profile == "" {
			o.AccessKeyID, o.SecretAccessKey = env.S3AccessKeyID, env.S3SecretAccessKey
		}
		return s3store.Open(ctx, o)
	}
	return nil, fmt.Errorf("unknown target kind %q", s.Kind)
}

// SourceAddr returns this host's address inside cidr (the backup
// network): the first one the interfaces list.
func SourceAddr(cidr netip.Prefix) (netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list this host's addresses: %w", err)
	}
	var found []string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		found = append(found, ip.String())
		if cidr.Contains(ip) {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no address of this host is inside the backup network %s (this host has %s)", cidr, strings.Join(found, ", "))
}
