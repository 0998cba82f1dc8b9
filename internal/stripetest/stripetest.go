// Package stripetest runs stripe-mock, Stripe's API simulator, for tests:
// like internal/pgtest does for PostgreSQL, it starts the real program on a
// free loopback port and stops it with the test.
//
//	mock := stripetest.Shared(t) // one per test process, started on first use
//	svc, err := billing.New(store, billing.Config{StripeKey: stripetest.Key, StripeAPIBase: mock.URL})
//
// stripe-mock is found on PATH, then in $(go env GOPATH)/bin (where `go
// install` puts it, even when that is not on PATH), or at
// $TENANTPLANE_STRIPE_MOCK. Install it with
//
//	go install github.com/stripe/stripe-mock@v0.203.0
//
// stripe-mock is stateless: it validates each request against Stripe's
// OpenAPI spec and answers with a fixture. It proves requests are well-formed,
// not that Stripe would keep what they create.
package stripetest

import (
	"bufio"
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

	startTimeout = 30 * time.Second
)

// ErrNotInstalled is returned (wrapped) when stripe-mock cannot be found.
var ErrNotInstalled = errors.New("stripe-mock not found on PATH, in $(go env GOPATH)/bin or at $" + EnvBinary +
	"; install it with: go install github.com/stripe/stripe-mock@" + Version)

// Binary returns the path of stripe-mock: $TENANTPLANE_STRIPE_MOCK when set,
// else the one on PATH, else $(go env GOPATH)/bin/stripe-mock.
func Binary() (string, error) { return findBinary(os.Getenv, exec.LookPath) }

func findBinary(getenv func(string) string, lookPath func(string) (string, error)) (string, error) {
	if p := getenv(EnvBinary); p != "" {
		if isExecutable(p) {
			return p, nil
		}
		return "", fmt.Errorf("%w (%s=%s is not an executable file)", ErrNotInstalled, EnvBinary, p)
	}
	if p, err := lookPath("stripe-mock"); err == nil {
		return p, nil
	}
	for _, dir := range gopaths(getenv) {
		if p := filepath.Join(dir, "bin", "stripe-mock"); isExecutable(p) {
			return p, nil
		}
	}
	return "", ErrNotInstalled
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
