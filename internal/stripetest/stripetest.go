// Package stripetest runs stripe-mock, Stripe's API simulator, for tests:
// like internal/pgtest does for PostgreSQL, it starts the real program on a
// free loopback port and stops it with the test.
//
//	mock := stripetest.Shared(t) // one per test process, started on first use
//	svc, err := billing.New(store, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: mock.URL})
//
// stripe-mock is taken from $TENANTPLANE_STRIPE_MOCK, else from PATH, else
// from $(go env GOPATH)/bin (where `go install` puts it, even when that is not
// on PATH); one found on PATH or in GOPATH that says it is another version
// than Version is passed over. When none is found, the package builds
// stripe-mock Version itself, once per machine:
//
//	GOBIN=$(os.UserCacheDir)/tenantplane/stripe-mock-v0.203.0 go install github.com/stripe/stripe-mock@v0.203.0
//
// with the go command of the toolchain running the tests (or the one on PATH),
// which needs the Go module proxy the first time. Test processes that start
// at once take turns on a file lock, so one builds and the others wait for it.
//
// stripe-mock is stateless: it validates each request against Stripe's
// OpenAPI spec and answers with a fixture. It proves requests are well-formed,
// not that Stripe would keep what they create.
package stripetest

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// Version is the stripe-mock the tests are written against.
	Version = "v0.203.0"
	// EnvBinary names the stripe-mock binary to use instead of searching for it.
	EnvBinary = "TENANTPLANE_STRIPE_MOCK"
	// Key is a test secret key; stripe-mock accepts any sk_test_ key.
	Key = "sk_test_tenantplane"

	module = "github.com/stripe/stripe-mock"

	startTimeout = 30 * time.Second
	// buildTimeout bounds building stripe-mock (a minute on two busy cores,
	// plus downloading its module the first time), and so the wait of the
	// processes queued behind the one building it.
	buildTimeout = 10 * time.Minute
	// versionTimeout bounds asking a found stripe-mock its version.
	versionTimeout = 5 * time.Second
)

// ErrNotInstalled is returned (wrapped) when stripe-mock can neither be found
// nor built. The wrapping error says why and what to do.
var ErrNotInstalled = errors.New("stripe-mock " + Version + " not found on PATH, in $(go env GOPATH)/bin or at $" + EnvBinary)

// Binary returns the path of stripe-mock: $TENANTPLANE_STRIPE_MOCK when set,
// else the one on PATH, else $(go env GOPATH)/bin/stripe-mock, else the one
// it builds into the user's cache directory (see the package doc). Found
// binaries that say they are another version than Version are passed over.
func Binary() (string, error) {
	return lookup{getenv: os.Getenv, lookPath: exec.LookPath, version: binaryVersion, build: buildCached}.find()
}

// lookup searches for stripe-mock; its fields are the outside world, so that
// tests can stand in for it.
type lookup struct {
	getenv   func(string) string
	lookPath func(string) (string, error)
	// version tells the version of a stripe-mock binary, "" if it cannot.
	version func(path string) string
	// build returns the stripe-mock it built (before, or now).
	build func() (string, error)
}

func (l lookup) find() (string, error) {
	if p := l.getenv(EnvBinary); p != "" {
		// Taken as it is: whoever sets it chose it.
		if isExecutable(p) {
			return p, nil
		}
		return "", fmt.Errorf("%w (%s=%s is not an executable file)", ErrNotInstalled, EnvBinary, p)
	}
	var found []string
	if p, err := l.lookPath("stripe-mock"); err == nil {
		found = append(found, p)
	}
	for _, dir := range gopaths(l.getenv) {
		if p := filepath.Join(dir, "bin", "stripe-mock"); isExecutable(p) {
			found = append(found, p)
		}
	}
	var passed []string
	for _, p := range found {
		if v := l.version(p); v != "" && v != Version {
			passed = append(passed, p+" is "+v)
			continue
		}
		return p, nil
	}
	p, err := l.build()
	if err != nil {
		note := ""
		if len(passed) > 0 {
			note = " (" + strings.Join(passed, "; ") + ")"
		}
		return "", fmt.Errorf("%w%s, and %w", ErrNotInstalled, note, err)
	}
	return p, nil
}

// gopaths are the GOPATH entries: $GOPATH, else `go env GOPATH`, else ~/go.
func gopaths(getenv func(string) string) []string {
	raw := getenv("GOPATH")
	if raw == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			raw = strings.TrimSpace(string(out))
		}
	}
	if raw == "" {
		if home, err := os.UserHomeDir(); err == nil {
			raw = filepath.Join(home, "go")
		}
	}
	return filepath.SplitList(raw)
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode().Perm()&0o111 != 0
}

// binaryVersion tells which version the stripe-mock at path is ("v0.203.0"),
// or "" when it cannot tell. One built by `go install` records its module's
// version (its -version says "master"); a released one says it on -version.
func binaryVersion(path string) string {
	if bi, err := buildinfo.ReadFile(path); err == nil && bi.Main.Path == module && strings.HasPrefix(bi.Main.Version, "v") {
		return bi.Main.Version
	}
	ctx, cancel := context.WithTimeout(context.Background(), versionTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "-version")
	cmd.WaitDelay = time.Second
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	v, ok := strings.CutPrefix(strings.TrimSpace(line), "stripe-mock ")
	if !ok || v == "" || v == "master" || strings.ContainsAny(v, " \t") {
		return ""
	}
	if !strings.HasPrefix(v, "v") {
		v = "v" + v // GoReleaser's builds say "0.203.0"
	}
	return v
}

// buildCached returns the stripe-mock of Version in the user's cache
// directory, building it there first if need be.
func buildCached() (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		base = filepath.Join(os.TempDir(), "tenantplane-cache") // no $HOME
	}
	return build(filepath.Join(base, "tenantplane", "stripe-mock-"+Version), goCommand)
}

// errNoGo is the cause when there is no go command to build stripe-mock with.
var errNoGo = errors.New("there is no go command to build it with (not in $GOROOT/bin nor on PATH)")

// goCommand finds the go command: the one of the toolchain that built these
// tests, else the one on PATH (which `go test` puts $GOROOT/bin in front of).
func goCommand() (string, error) {
	//lint:ignore SA1019 a test binary runs where it was built, so the root it was built with is the toolchain at hand
	if root := runtime.GOROOT(); root != "" {
		if p := filepath.Join(root, "bin", "go"); isExecutable(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	return "", errNoGo
}

// build returns dir/stripe-mock, first running `go install` into dir if it
// is not there. The binary appears whole or not at all: go install writes it
// into a temporary directory next to it, from which it is renamed into place;
// so its presence alone means it is complete, and a build killed half-way
// leaves only a temporary directory, removed by the next build. Processes
// building at once take turns on a lock file in dir: the first builds, the
// others find its binary when their turn comes.
func build(dir string, goCommand func() (string, error)) (string, error) {
	bin := filepath.Join(dir, "stripe-mock")
	if isExecutable(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("building it failed: %w", err)
	}
	unlock, err := lockDir(dir, buildTimeout+time.Minute)
	if err != nil {
		return "", fmt.Errorf("building it failed: %w", err)
	}
	defer unlock()
	if isExecutable(bin) {
		return bin, nil
	}
	goBin, err := goCommand()
	if err != nil {
		return "", fmt.Errorf("%w: install Go, or stripe-mock %s on PATH or at $%s", err, Version, EnvBinary)
	}
	install := "go install " + module + "@" + Version
	fail := func(cause error) (string, error) {
		return "", fmt.Errorf("building it with `GOBIN=%s %s` failed: %w; run that to see why (it needs the Go module proxy), or set $%s to a stripe-mock %s",
			dir, install, cause, EnvBinary, Version)
	}
	// Left by builds that were killed: only the lock holder builds.
	if old, err := filepath.Glob(filepath.Join(dir, "tmp-*")); err == nil {
		for _, p := range old {
			_ = os.RemoveAll(p)
		}
	}
	tmp, err := os.MkdirTemp(dir, "tmp-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)

	fmt.Fprintf(os.Stderr, "stripetest: building stripe-mock %s into %s (once per machine)\n", Version, dir)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "install", module+"@"+Version)
	// Run outside this module and any workspace: pkg@version builds with
	// stripe-mock's own go.mod. No cgo: stripe-mock needs none.
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOWORK=off", "CGO_ENABLED=0")
	cmd.WaitDelay = 10 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		if ctx.Err() != nil {
			return fail(fmt.Errorf("not done within %s", buildTimeout))
		}
		if line := lastLine(out); line != "" {
			return fail(errors.New(line))
		}
		return fail(err)
	}
	if err := os.Rename(filepath.Join(tmp, "stripe-mock"), bin); err != nil {
		return fail(err)
	}
	return bin, nil
}

// lockDir takes the lock of dir, waiting for it at most timeout; unlock
// releases it. The kernel releases it too when the process ends, however it
// ends, so a killed build never holds it.
func lockDir(dir string, timeout time.Duration) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("another process has held %s for %s (building stripe-mock?)", f.Name(), timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lastLine is the last non-empty line of out: go's error comes last.
func lastLine(out []byte) string {
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	return strings.TrimSpace(string(lines[len(lines)-1]))
}

// Mock is a running stripe-mock.
type Mock struct {
	// URL is its HTTP address, e.g. http://127.0.0.1:41233: the Stripe API base.
	URL string

	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// Start starts a stripe-mock for this test alone, stopped when it ends. It
// fails the test when stripe-mock is not installed.
func Start(t testing.TB) *Mock {
	t.Helper()
	m, err := start()
	if err != nil {
		t.Fatalf("stripetest: %v", err)
	}
	t.Cleanup(m.stop)
	return m
}

var (
	sharedOnce sync.Once
	shared     *Mock
	sharedErr  error
)

// Shared returns the stripe-mock of this test process, starting it on first
// use. It lives as long as the process (the kernel stops it when the process
// ends, however it ends). Tests share it freely: stripe-mock keeps no state.
func Shared(t testing.TB) *Mock {
	t.Helper()
	sharedOnce.Do(func() { shared, sharedErr = start() })
	if sharedErr != nil {
		t.Fatalf("stripetest: %v", sharedErr)
	}
	return shared
}

// start runs stripe-mock on free loopback ports (HTTP and the HTTPS it also
// opens) and waits until it listens.
//
// The child gets SIGKILL when the thread that started it ends: the process
// is started from a goroutine locked to its thread, which stays until the
// child exits, so the child lives exactly as long as the test process (or
// until stop).
func start() (*Mock, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	type result struct {
		m   *Mock
		err error
	}
	ready := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread ends with this goroutine, after the child.
		cmd := exec.Command(bin, "-http-addr", "127.0.0.1:", "-https-addr", "127.0.0.1:")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := cmd.StdoutPipe()
		if err != nil {
			ready <- result{err: err}
			return
		}
		cmd.Stderr = cmd.Stdout
		if err := cmd.Start(); err != nil {
			ready <- result{err: fmt.Errorf("starting %s: %w", bin, err)}
			return
		}
		m := &Mock{cmd: cmd, done: make(chan struct{})}
		sc := bufio.NewScanner(out)
		var seen []string
		const prefix = "Listening for HTTP at address: "
		for sc.Scan() {
			line := sc.Text()
			seen = append(seen, line)
			if addr, ok := strings.CutPrefix(line, prefix); ok {
				m.URL = "http://" + strings.TrimSpace(addr)
				break
			}
		}
		if m.URL == "" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			ready <- result{err: fmt.Errorf("%s exited before listening: %s", bin, strings.Join(seen, " | "))}
			return
		}
		ready <- result{m: m}
		_, _ = io.Copy(io.Discard, out) // it logs every request: keep the pipe flowing
		_ = cmd.Wait()
		close(m.done)
	}()
	select {
	case r := <-ready:
		if r.err != nil {
			return nil, r.err
		}
		if err := r.m.waitReady(); err != nil {
			r.m.stop()
			return nil, err
		}
		return r.m, nil
	case <-time.After(startTimeout):
		return nil, fmt.Errorf("%s did not listen within %s", bin, startTimeout)
	}
}

// waitReady waits until the mock answers an API call.
func (m *Mock) waitReady() error {
	deadline := time.Now().Add(startTimeout)
	for {
		req, _ := http.NewRequest("GET", m.URL+"/v1/balance", nil)
		req.Header.Set("Authorization", "Bearer "+Key)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("stripe-mock at %s does not answer: %v", m.URL, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop kills the mock and waits for it to exit.
func (m *Mock) stop() {
	_ = m.cmd.Process.Kill()
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
	}
}
