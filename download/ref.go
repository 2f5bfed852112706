package download

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
)

// ErrNotRef is returned by ParseRef for a string that is not a network
// reference; callers treat it as a local path.
var ErrNotRef = errors.New("not a model reference")

// Kinds of Ref.
const (
	KindURL = "url"
	KindHF  = "hf"
)

// DefaultEndpoint is the Hugging Face hub used when neither Hub.Endpoint nor
// $HF_ENDPOINT names another.
const DefaultEndpoint = "https://huggingface.co"

// Ref is a parsed model reference.
type Ref struct {
	Raw  string // what the user typed
	Kind string // KindURL or KindHF
	// URL is the file's URL: the URL itself, or for hf refs
	// ENDPOINT/ORG/REPO/resolve/REV/FILE with ENDPOINT from $HF_ENDPOINT
	// (a Hub recomputes it with its own endpoint). Empty for an hf ref
	// whose file Resolve has not picked yet.
	URL string
	// For hf refs. File may be empty (Resolve picks it, honouring Quant);
	// Revision defaults to "main".
	Repo, File, Revision string
	Quant                string // quantization hint of "hf:ORG/REPO:Q4_K_M"
}

// ParseRef parses a model reference:
//
//	https://host/path/model.gguf      (http:// only for loopback hosts)
//	hf:ORG/REPO/FILE.gguf             (FILE may contain directories)
//	hf:ORG/REPO                       (Hub.Resolve picks the file)
//	hf:ORG/REPO:Q4_K_M                (... with a quantization hint)
//	hf:ORG/REPO@REV/FILE.gguf, hf:ORG/REPO@REV[:QUANT]
//
// Anything else that does not look like a URL is a local path: ParseRef
// returns ErrNotRef for it.
func ParseRef(s string) (Ref, error) {
	r := Ref{Raw: s}
	if rest, ok := cutPrefixFold(s, "hf:"); ok {
		if err := checkChars(s); err != nil {
			return Ref{}, fmt.Errorf("parse ref %q: %w", s, err)
		}
		if err := r.parseHF(rest); err != nil {
			return Ref{}, fmt.Errorf("parse ref %q: %w", s, err)
		}
		r.URL = fileURL(endpointFromEnv(), r)
		return r, nil
	}
	scheme, _, isURL := strings.Cut(s, "://")
	if !isURL || strings.ContainsAny(scheme, `/\.`) {
		return Ref{}, ErrNotRef
	}
	if err := checkChars(s); err != nil {
		return Ref{}, fmt.Errorf("parse ref %q: %w", s, err)
	}
	u, err := url.Parse(s)
	if err != nil {
		return Ref{}, fmt.Errorf("parse ref: %w", err)
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
	case "http":
		if !isLoopback(u.Hostname()) {
			return Ref{}, fmt.Errorf("parse ref %q: plain http is refused for %s (a model must not be fetched unencrypted); use https://", s, u.Hostname())
		}
	default:
		return Ref{}, fmt.Errorf("parse ref %q: unsupported scheme %q; want https:// or hf:", s, u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return Ref{}, fmt.Errorf("parse ref %q: no host", s)
	}
	if u.User != nil {
		return Ref{}, fmt.Errorf("parse ref %q: credentials in the URL are refused; hub tokens go in HF_TOKEN", s)
	}
	if strings.Trim(u.Path, "/") == "" {
		return Ref{}, fmt.Errorf("parse ref %q: no file in the URL", s)
	}
	r.Kind, r.URL = KindURL, u.String()
	return r, nil
}

func (r *Ref) parseHF(rest string) error {
	r.Kind = KindHF
	parts := strings.Split(rest, "/")
	if len(parts) < 2 {
		return errors.New("want hf:ORG/REPO or hf:ORG/REPO/FILE.gguf")
	}
	org, repo := parts[0], parts[1]
	if len(parts) == 2 {
		if i := strings.LastIndexByte(repo, ':'); i >= 0 {
			repo, r.Quant = repo[:i], repo[i+1:]
			if r.Quant == "" || strings.IndexFunc(r.Quant, func(c rune) bool { return !isAlnum(c) && c != '_' }) >= 0 {
				return fmt.Errorf("bad quantization hint %q: want letters, digits and _ like Q4_K_M", r.Quant)
			}
		}
	}
	repo, r.Revision, _ = strings.Cut(repo, "@")
	if r.Revision == "" {
		if strings.Contains(parts[1], "@") {
			return errors.New("empty revision after @")
		}
		r.Revision = "main"
	}
	if err := checkName("org", org); err != nil {
		return err
	}
	if err := checkName("repo", repo); err != nil {
		return err
	}
	if err := checkName("revision", r.Revision); err != nil {
		return err
	}
	r.Repo = org + "/" + repo
	if len(parts) == 2 {
		return nil
	}
	for _, p := range parts[2:] {
		if err := checkName("file", p); err != nil {
			return err
		}
	}
	r.File = strings.Join(parts[2:], "/")
	if !strings.HasSuffix(strings.ToLower(r.File), ".gguf") {
		return fmt.Errorf("file %q is not a .gguf file", r.File)
	}
	return nil
}

// checkName accepts one path segment of an hf ref: letters, digits and
// "-_.+", no "..". The set is narrow on purpose: names end up in paths and
// URLs and, through the CLI, in messages that people copy into shells.
func checkName(what, s string) error {
	if s == "" {
		return fmt.Errorf("empty %s", what)
	}
	if strings.Contains(s, "..") {
		return fmt.Errorf("%s %q contains \"..\"", what, s)
	}
	if s == "." { // a URL path would drop it: hf:ORG/. names ORG
		return fmt.Errorf("%s %q is not a name", what, s)
	}
	for _, c := range s {
		if !isAlnum(c) && !strings.ContainsRune("-_.+", c) {
			return fmt.Errorf("%s %q contains %q; want letters, digits and -_.+", what, s, c)
		}
	}
	return nil
}

// checkChars refuses whitespace and control characters anywhere.
func checkChars(s string) error {
	for _, c := range s {
		if c <= ' ' || c == 0x7f || (c >= 0x80 && c <= 0x9f) || c == '\u00a0' || c == '\u2028' || c == '\u2029' {
			return fmt.Errorf("contains %q (whitespace or a control character)", c)
		}
	}
	return nil
}

func isAlnum(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

func endpointFromEnv() string {
	if e := os.Getenv("HF_ENDPOINT"); e != "" {
		return strings.TrimRight(e, "/")
	}
	return DefaultEndpoint
}

// fileURL is the hub URL of an hf ref's file; "" while the file is unknown.
func fileURL(endpoint string, r Ref) string {
	if r.File == "" {
		return ""
	}
	return endpoint + "/" + r.Repo + "/resolve/" + url.PathEscape(r.Revision) + "/" + r.File
}
