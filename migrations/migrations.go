package migrations

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

//go:embed sql/*.sql
var embedded embed.FS

// Source is a set of tenant migrations: numbered golang-migrate up/down pairs.
type Source struct {
	fsys     fs.FS
	versions []uint
	up       map[uint]string // the up file of each version
	hash     string
	origin   string
}

var fileRE = regexp.MustCompile(`^([0-9]+)_[^.]+\.(up|down)\.sql$`)

// Embedded returns the tenant migrations built into the binary.
func Embedded() Source {
	sub, _ := fs.Sub(embedded, "sql")
	src, err := newSource(sub, "embedded")
	if err != nil {
		panic(err) // the embedded set is checked by the tests
	}
	return src
}

// Load returns the migrations in dir, or the embedded set when dir is "".
func Load(dir string) (Source, error) {
	if dir == "" {
		return Embedded(), nil
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return Source{}, fmt.Errorf("tenant migrations: %q is not a readable directory", dir)
	}
	return newSource(os.DirFS(dir), dir)
}

// newSource reads and checks a set: every file is a numbered up or down
// migration, no version is used twice, and every version has an up file.
func newSource(fsys fs.FS, origin string) (Source, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return Source{}, fmt.Errorf("tenant migrations in %s: %w", origin, err)
	}
	type pair struct{ up, down string }
	byVersion := map[uint]*pair{}
	h := sha256.New()
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m := fileRE.FindStringSubmatch(e.Name())
		if m == nil {
			return Source{}, fmt.Errorf("tenant migrations in %s: %q is not named NNN_name.up.sql or NNN_name.down.sql", origin, e.Name())
		}
		v64, err := strconv.ParseUint(m[1], 10, 32)
		if err != nil || v64 == 0 {
			return Source{}, fmt.Errorf("tenant migrations in %s: %q has a bad version number", origin, e.Name())
		}
		v := uint(v64)
		p := byVersion[v]
		if p == nil {
			p = &pair{}
			byVersion[v] = p
		}
		slot := &p.up
		if m[2] == "down" {
			slot = &p.down
		}
		if *slot != "" {
			return Source{}, fmt.Errorf("tenant migrations in %s: version %d has two %s files: %s and %s", origin, v, m[2], *slot, e.Name())
		}
		*slot = e.Name()
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return Source{}, err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", e.Name(), len(body))
		h.Write(body)
	}
	src := Source{fsys: fsys, origin: origin, up: map[uint]string{}}
	for v, p := range byVersion {
		if p.up == "" {
			return Source{}, fmt.Errorf("tenant migrations in %s: version %d has no up file", origin, v)
		}
		src.versions = append(src.versions, v)
		src.up[v] = p.up
	}
	if len(src.versions) == 0 {
		return Source{}, fmt.Errorf("tenant migrations in %s: no migrations found", origin)
	}
	sort.Slice(src.versions, func(i, j int) bool { return src.versions[i] < src.versions[j] })
	src.hash = hex.EncodeToString(h.Sum(nil))[:12]
	return src, nil
}

// FS is the migration files, for golang-migrate's iofs source.
func (s Source) FS() fs.FS { return s.fsys }

// Latest is the newest version in the set.
func (s Source) Latest() uint { return s.versions[len(s.versions)-1] }

// Versions lists every version, in order.
func (s Source) Versions() []uint { return append([]uint(nil), s.versions...) }

// Has reports whether v is a version of the set (0, no schema, always is).
func (s Source) Has(v uint) bool {
	if v == 0 {
		return true
	}
	i := sort.Search(len(s.versions), func(i int) bool { return s.versions[i] >= v })
	return i < len(s.versions) && s.versions[i] == v
}

// Hash identifies the set's content: it changes when any file does.
func (s Source) Hash() string { return s.hash }

// Origin says where the set came from: "embedded" or the directory.
func (s Source) Origin() string { return s.origin }

// ExtensionUse is a CREATE EXTENSION found in an up migration.
type ExtensionUse struct {
	Version uint
	Name    string
}

var createExtensionRE = regexp.MustCompile(`(?i)\bCREATE\s+EXTENSION\s+(?:IF\s+NOT\s+EXISTS\s+)?("(?:[^"]|"")+"|[a-z_][a-z0-9_$-]*)`)

// Extensions lists the extensions the up migrations of versions from (not
// included) to to (included) create, in order, so that a run can check
// before it starts that the servers' roles may create them. It reads the
// files' text: an extension created by dynamic SQL is not seen.
func (s Source) Extensions(from, to uint) ([]ExtensionUse, error) {
	var uses []ExtensionUse
	for _, v := range s.versions {
		if v <= from || v > to {
			continue
		}
		body, err := fs.ReadFile(s.fsys, s.up[v])
		if err != nil {
			return nil, err
		}
		for _, m := range createExtensionRE.FindAllStringSubmatch(sqlComments.ReplaceAllString(string(body), " "), -1) {
			ext := m[1]
			if strings.HasPrefix(ext, `"`) {
				ext = strings.ReplaceAll(ext[1:len(ext)-1], `""`, `"`)
			} else {
				ext = strings.ToLower(ext)
			}
			uses = append(uses, ExtensionUse{Version: v, Name: ext})
		}
	}
	return uses, nil
}

// sqlComments matches SQL comments, so that a commented-out statement is not
// taken for one.
var sqlComments = regexp.MustCompile(`(?s)--[^\n]*|/\*.*?\*/`)
