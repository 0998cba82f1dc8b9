package stripetest

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFindOrder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin", "stripe-mock")
	require.NoError(t, os.MkdirAll(filepath.Dir(bin), 0o755))
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755))
	const onPath = "/usr/bin/stripe-mock"
	notOnPath := func(string) (string, error) { return "", errors.New("not found") }
	isOnPath := func(string) (string, error) { return onPath, nil }
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	versions := func(m map[string]string) func(string) string { return func(p string) string { return m[p] } }
	const built = "/cache/stripe-mock"
	builds := 0
	build := func() (string, error) { builds++; return built, nil }
	l := lookup{getenv: env(nil), lookPath: notOnPath, version: versions(nil), build: build}

	// Not on PATH, but in GOPATH/bin, where `go install` puts it.
	l.getenv = env(map[string]string{"GOPATH": "/nonexistent" + string(filepath.ListSeparator) + dir})
	got, err := l.find()
	require.NoError(t, err)
	require.Equal(t, bin, got)

	// PATH first.
	l.getenv, l.lookPath = env(map[string]string{"GOPATH": dir}), isOnPath
	got, err = l.find()
	require.NoError(t, err)
	require.Equal(t, onPath, got)

	// One that says it is another version is passed over; one that cannot
	// tell ("master") is taken.
	l.version = versions(map[string]string{onPath: "v0.190.0", bin: Version})
	got, err = l.find()
	require.NoError(t, err)
	require.Equal(t, bin, got)
	l.version = versions(map[string]string{onPath: "v0.190.0", bin: ""})
	got, err = l.find()
	require.NoError(t, err)
	require.Equal(t, bin, got)
	require.Zero(t, builds)

	// None of the pinned version: the built one.
	l.version = versions(map[string]string{onPath: "v0.190.0", bin: "v0.204.0"})
	got, err = l.find()
	require.NoError(t, err)
	require.Equal(t, built, got)
	require.Equal(t, 1, builds)

	// Nowhere: the built one.
	l.getenv, l.lookPath, l.version = env(map[string]string{"GOPATH": filepath.Join(dir, "empty")}), notOnPath, versions(nil)
	got, err = l.find()
	require.NoError(t, err)
	require.Equal(t, built, got)
	require.Equal(t, 2, builds)

	// The override wins, even of another version, and must exist.
	l.getenv, l.lookPath, l.version = env(map[string]string{EnvBinary: bin}), isOnPath, versions(map[string]string{bin: "v0.1.0"})
	got, err = l.find()
	require.NoError(t, err)
	require.Equal(t, bin, got)
	l.getenv = env(map[string]string{EnvBinary: filepath.Join(dir, "nope")})
	_, err = l.find()
	require.ErrorIs(t, err, ErrNotInstalled)
	require.Contains(t, err.Error(), EnvBinary+"="+filepath.Join(dir, "nope"))
	require.Equal(t, 2, builds)

	// Building fails: the error names what was passed over and the cause.
	l.getenv, l.version = env(map[string]string{"GOPATH": dir}), versions(map[string]string{onPath: "v0.190.0", bin: "v0.190.0"})
	l.build = func() (string, error) { return "", errors.New("building it failed: boom") }
	_, err = l.find()
	require.ErrorIs(t, err, ErrNotInstalled)
	require.Contains(t, err.Error(), onPath+" is v0.190.0; "+bin+" is v0.190.0")
	require.Contains(t, err.Error(), "boom")
}

func TestBinaryVersion(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755))
		return p
	}
	// A release says its version without the v.
	require.Equal(t, "v0.190.0", binaryVersion(script("release", `[ "$1" = -version ] && echo "stripe-mock 0.190.0"`)))
	// Built from source, -version says master: cannot tell.
	require.Equal(t, "", binaryVersion(script("source", `echo "stripe-mock master"`)))
	require.Equal(t, "", binaryVersion(script("other", `echo "usage: other"; exit 2`)))
	require.Equal(t, "", binaryVersion(filepath.Join(dir, "missing")))
}

// fakeGo writes a go command that logs its arguments to dir/calls and then
// runs body (with $GOBIN set as go install would use it).
func fakeGo(t *testing.T, dir, body string) func() (string, error) {
	t.Helper()
	p := filepath.Join(dir, "go")
	script := "#!/bin/sh\necho \"$*\" >> " + filepath.Join(dir, "calls") + "\n" + body + "\n"
	require.NoError(t, os.WriteFile(p, []byte(script), 0o755))
	return func() (string, error) { return p, nil }
}

func calls(t *testing.T, dir string) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "calls"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	require.NoError(t, err)
	return strings.Split(strings.TrimSpace(string(raw)), "\n")
}

// Processes building at once build once; the binary is reused; a killed
// build's leftovers are removed.
func TestBuildOnceAtATime(t *testing.T) {
	t.Parallel()
	goDir, cache := t.TempDir(), filepath.Join(t.TempDir(), "stripe-mock-"+Version)
	goCmd := fakeGo(t, goDir, `sleep 0.3; printf '#!/bin/sh\n' > "$GOBIN/stripe-mock"; chmod +x "$GOBIN/stripe-mock"`)
	require.NoError(t, os.MkdirAll(filepath.Join(cache, "tmp-killed"), 0o755))

	const n = 4
	got := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			// Each call opens the lock file anew, so they contend on it as
			// separate processes would.
			bin, err := build(cache, goCmd)
			assert.NoError(t, err)
			got <- bin
		})
	}
	wg.Wait()
	close(got)
	for bin := range got {
		require.Equal(t, filepath.Join(cache, "stripe-mock"), bin)
	}
	require.Equal(t, []string{"install " + module + "@" + Version}, calls(t, goDir))
	left, err := filepath.Glob(filepath.Join(cache, "tmp-*"))
	require.NoError(t, err)
	require.Empty(t, left, "temporary directories removed")

	bin, err := build(cache, goCmd)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(cache, "stripe-mock"), bin)
	require.Len(t, calls(t, goDir), 1, "the built binary is reused")
}

// A failed build leaves no binary, and its error is one line saying what to do.
func TestBuildFails(t *testing.T) {
	t.Parallel()
	goDir, cache := t.TempDir(), filepath.Join(t.TempDir(), "stripe-mock-"+Version)
	goCmd := fakeGo(t, goDir, `echo half > "$GOBIN/stripe-mock"; chmod +x "$GOBIN/stripe-mock"
echo "go: downloading github.com/stripe/stripe-mock v0.203.0" >&2
echo "go: github.com/stripe/stripe-mock@v0.203.0: dial tcp: lookup proxy.golang.org: no such host" >&2
exit 1`)
	emptyGopath := t.TempDir() // not the machine's: a stripe-mock there would be found
	l := lookup{
		getenv:   func(k string) string { return map[string]string{"GOPATH": emptyGopath}[k] },
		lookPath: func(string) (string, error) { return "", errors.New("not found") },
		version:  func(string) string { return "" },
		build:    func() (string, error) { return build(cache, goCmd) },
	}
	_, err := l.find()
	require.ErrorIs(t, err, ErrNotInstalled)
	msg := err.Error()
	require.NotContains(t, msg, "\n")
	require.Contains(t, msg, "no such host")
	require.Contains(t, msg, "go install "+module+"@"+Version)
	require.Contains(t, msg, EnvBinary)
	require.NoFileExists(t, filepath.Join(cache, "stripe-mock"), "no half binary")
	left, err := filepath.Glob(filepath.Join(cache, "tmp-*"))
	require.NoError(t, err)
	require.Empty(t, left)

	// No go command at all.
	l.build = func() (string, error) { return build(cache, func() (string, error) { return "", errNoGo }) }
	_, err = l.find()
	require.ErrorIs(t, err, ErrNotInstalled)
	require.Contains(t, err.Error(), "no go command")
	require.Contains(t, err.Error(), "install Go")
}

func TestStartAnswersAndStops(t *testing.T) {
	t.Parallel()
	m := Start(t)
	require.True(t, strings.HasPrefix(m.URL, "http://127.0.0.1:"), m.URL)
	shared := Shared(t)
	require.NotEqual(t, m.URL, shared.URL, "a private mock has a port of its own")
	require.Same(t, shared, Shared(t))

	for _, url := range []string{m.URL, shared.URL} {
		req, err := http.NewRequest("POST", url+"/v1/customers", strings.NewReader("name=Acme"))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+Key)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}

	m.stop()
	_, err := http.Get(m.URL + "/v1/balance")
	require.Error(t, err, "a stopped mock no longer listens")
}
