package target

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// Credentials never travel in a target's URL or options: those are
// recorded in the inventory (a backup's target), shown in replies and
// logged. A target that carries one is refused, and the refusal names the
// option, never its value. S3 credentials come from the daemon's
// configuration, the AWS environment or a named profile.

// secretWords mark an option name that holds a credential.
var secretWords = []string{"key", "secret", "password", "passwd", "token", "credential", "auth", "signature"}

func secretName(name string) bool {
	n := strings.ToLower(name)
	for _, w := range secretWords {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}

// ErrCredentials is wrapped by the refusal of a target carrying one.
var ErrCredentials = errors.New("credentials do not belong in a target's URL, options or tags (they would be stored and shown); give S3 credentials with --s3-access-key-id/--s3-secret-access-key, the AWS environment or profile=NAME")

func hasUserInfo(s string) bool {
	if i := strings.Index(s, "://"); i >= 0 {
		rest := s[i+3:]
		if j := strings.IndexAny(rest, "/?#"); j >= 0 {
			rest = rest[:j]
		}
		return strings.Contains(rest, "@")
	}
	// HOST:/PATH (nfs): user info would sit before the host.
	host, _, _ := strings.Cut(s, ":/")
	return strings.Contains(host, "@")
}

// checkCredentials refuses a spec whose URL or options carry a credential.
func (s Spec) checkCredentials() error {
	if hasUserInfo(s.URL) {
		return fmt.Errorf("%s target: user info in its url: %w", s.Kind, ErrCredentials)
	}
	if s.Options == "" {
		return nil
	}
	for _, opt := range strings.Split(s.Options, ",") {
		k, v, _ := strings.Cut(opt, "=")
		if secretName(k) {
			return fmt.Errorf("%s target: option %s: %w", s.Kind, k, ErrCredentials)
		}
		if hasUserInfo(v) {
			return fmt.Errorf("%s target: user info in option %s: %w", s.Kind, k, ErrCredentials)
		}
	}
	return nil
}

var (
	userInfoRE  = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]*@`)
	bareInfoRE  = regexp.MustCompile(`[^\s/:"@]+:[^\s/:"@]*@`) // user:pass@host:/export
	secretOptRE = regexp.MustCompile(`(?i)([A-Za-z0-9_.-]*(?:key|secret|password|passwd|token|credential|auth|signature)[A-Za-z0-9_.-]*)=[^,&\s"]*`)
)

// Redact hides what may be a credential in s (user info in URLs, values
// of options named like secrets), for messages that must quote input.
func Redact(s string) string {
	s = userInfoRE.ReplaceAllString(s, "${1}REDACTED@")
	s = bareInfoRE.ReplaceAllString(s, "REDACTED@")
	return secretOptRE.ReplaceAllString(s, "${1}=REDACTED")
}

// redacted is err with its message redacted (validation errors quote
// their input); its chain is kept for errors.Is.
type redacted struct{ err error }

func (r redacted) Error() string { return Redact(r.err.Error()) }
func (r redacted) Unwrap() error { return r.err }

func redact(err error) error {
	if err == nil {
		return nil
	}
	return redacted{err}
}

// validateQuery refuses a URL query that carries a credential.
func validateQuery(q url.Values) error {
	for k, vs := range q {
		if secretName(k) {
			return fmt.Errorf("option %s: %w", k, ErrCredentials)
		}
		for _, v := range vs {
			if hasUserInfo(v) {
				return fmt.Errorf("user info in option %s: %w", k, ErrCredentials)
			}
		}
	}
	return nil
}
