// Package faulttest puts Toxiproxy (github.com/Shopify/toxiproxy/v2), in
// process, between the code under test and a dependency (a tenant server,
// the catalog, Stripe), so a test can inject network faults on that wire:
// latency, a hung connection, resets, a slow bandwidth, a sliced stream.
// Proxies listen on 127.0.0.1 only.
//
//	p := faulttest.NewProxy(t, "pg-1", srv.Addr())
//	dsn := p.DSN(srv.DSN("postgres"))    // the same DSN, through the proxy
//	remove := p.Add(t, faulttest.Hang()) // every byte on the wire stops
//	defer remove()
//
// Seeded tests take their seed from Seed, which logs it with the line that
// replays the run.
package faulttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

// EnvSeed replays a seeded fault, fuzz or kill test: its value is the seed
// the failed run printed.
const EnvSeed = "TENANTPLANE_FAULT_SEED"

// Seed returns the seed of a seeded test, from EnvSeed or else random, and
// logs it with how to replay the run.
func Seed(t testing.TB) uint64 {
	t.Helper()
	seed := rand.Uint64() >> 1
	if s := os.Getenv(EnvSeed); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want a decimal seed", EnvSeed, s)
		}
		seed = v
	}
	run := "-run '^" + t.Name() + "$'"
	if _, ok := t.(*testing.B); ok {
		run = "-run '^$' -bench '^" + t.Name() + "$' -benchtime 1x"
	}
	t.Logf("seed %d (replay: %s=%d go test %s)", seed, EnvSeed, seed, run)
	return seed
}

// VerifyNoLeaks checks, once the test is over (after every cleanup it
// registers later: call it first), that each goroutine started since the
// call has ended, waiting up to ten seconds for them to wind down: a leaked
// goroutine fails the test, with its stack. Goroutines running at the call
// are left out, so start what the test shares with others (pgtest's shared
// server, stripe-mock) before it. The check sees the whole process: a test
// that makes it runs alone, not t.Parallel (its own subtests may be).
// Idle keep-alive connections of http.DefaultTransport are closed first:
// their goroutines are a cache, not a leak. Toxiproxy's own are left out:
// a stopped proxy can leave a toxic's goroutine blocked on a channel nobody
// reads (v2.12.0, ToxicLink.AddToxic racing the link's close), a leak of the
// test harness, not of the code under test.
func VerifyNoLeaks(t *testing.T, opts ...goleak.Option) {
	t.Helper()
	opts = append(opts, goleak.IgnoreCurrent(), goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2/toxics.(*ToxicStub).Run"))
	t.Cleanup(func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			http.DefaultTransport.(*http.Transport).CloseIdleConnections()
			err := goleak.Find(opts...)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("goroutines left running after the test: %v", err)
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

// EnvInt is the whole number in the environment variable name (a long
// benchmark's size, say), def when it is unset.
func EnvInt(t testing.TB, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%s=%q: want a whole number", name, s)
	}
	return n
}

// Fault is one Toxiproxy toxic: its type, the direction it applies to
// ("downstream": from the dependency to us, "upstream": from us to it) and
// its attributes, as Toxiproxy's API takes them.
type Fault struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Stream     string         `json:"stream"`
	Toxicity   float32        `json:"toxicity"`
	Attributes map[string]any `json:"attributes"`
}

// Latency delays every chunk from the dependency by ms milliseconds (± jitter).
func Latency(ms, jitter int) Fault {
	return Fault{Name: "latency", Type: "latency", Stream: "downstream", Toxicity: 1,
		Attributes: map[string]any{"latency": ms, "jitter": jitter}}
}

// Hang stops every byte, both ways, without closing the connections: a
// dependency that hangs (Toxiproxy's timeout toxic with no timeout, on both
// streams). New connections are accepted and hang too. What was sent while
// it was on is lost.
func Hang() Fault {
	return Fault{Name: "hang", Type: "timeout", Stream: both, Toxicity: 1,
		Attributes: map[string]any{"timeout": 0}}
}

// both is a Stream that injects the fault on each stream (two toxics).
const both = "both"

// Reset answers every connection with a TCP reset after ms milliseconds
// (0: at once), data in flight lost.
func Reset(ms int) Fault {
	return Fault{Name: "reset", Type: "reset_peer", Stream: "upstream", Toxicity: 1,
		Attributes: map[string]any{"timeout": ms}}
}

// Bandwidth limits the stream from the dependency to kbps kilobytes a second.
func Bandwidth(kbps int) Fault {
	return Fault{Name: "bandwidth", Type: "bandwidth", Stream: "downstream", Toxicity: 1,
		Attributes: map[string]any{"rate": kbps}}
}

// Slice cuts the stream from the dependency into pieces of about size
// bytes, each delayed by delayMicros: messages arrive in fragments.
func Slice(size, delayMicros int) Fault {
	return Fault{Name: "slicer", Type: "slicer", Stream: "downstream", Toxicity: 1,
		Attributes: map[string]any{"average_size": size, "size_variation": size / 2, "delay": delayMicros}}
}

// Each is every kind of fault, in a fixed order, with values that slow a
// PostgreSQL conversation down without stopping it (but Hang and Reset).
func Each() []Fault {
	return []Fault{Latency(50, 10), Hang(), Reset(0), Bandwidth(32), Slice(16, 200)}
}

// Proxy is one Toxiproxy proxy in this process, in front of one dependency.
type Proxy struct {
	p *toxiproxy.Proxy

	mu     sync.Mutex
	faults map[string][]string // a fault's toxics
}

var (
	apiOnce sync.Once
	api     *toxiproxy.ApiServer
)

// NewProxy starts a proxy on a free loopback port in front of upstream
// (host:port); it stops, closing its connections, when the test ends.
func NewProxy(t testing.TB, name, upstream string) *Proxy {
	t.Helper()
	p, err := Start(name, upstream)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return p
}

// Start starts a proxy on a free loopback port in front of upstream, for
// a benchmark or a helper that manages its lifetime: Stop ends it.
func Start(name, upstream string) (*Proxy, error) {
	apiOnce.Do(func() {
		// Some toxics log through zerolog's global logger: quiet.
		zerolog.SetGlobalLevel(zerolog.WarnLevel)
		api = toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	})
	p := toxiproxy.NewProxy(api, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("faulttest: proxy %s to %s: %w", name, upstream, err)
	}
	return &Proxy{p: p, faults: map[string][]string{}}, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.p.Listen }

// Port is the proxy's port.
func (p *Proxy) Port() int {
	_, port, _ := net.SplitHostPort(p.Addr())
	n, _ := strconv.Atoi(port)
	return n
}

// DSN returns dsn (a postgres:// URL) pointed at the proxy instead of its host.
func (p *Proxy) DSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		panic(fmt.Sprintf("faulttest: DSN %q: %v", dsn, err))
	}
	u.Host = p.Addr()
	return u.String()
}

// ProxyDSN starts a proxy in front of the host of dsn (a postgres:// URL)
// and returns it with dsn pointed at it.
func ProxyDSN(t testing.TB, name, dsn string) (*Proxy, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("faulttest: DSN: %v", err)
	}
	p := NewProxy(t, name, u.Host)
	return p, p.DSN(dsn)
}

// URL returns base (an http:// URL) pointed at the proxy.
func (p *Proxy) URL(base string) string { return p.DSN(base) }

// Add injects a fault until the returned function (or Clear) removes it.
func (p *Proxy) Add(t testing.TB, f Fault) (remove func()) {
	t.Helper()
	if err := p.Inject(f); err != nil {
		t.Fatal(err)
	}
	return func() { p.Remove(f.Name) }
}

// Inject injects a fault; a fault of the same name must not be on already.
func (p *Proxy) Inject(f Fault) error {
	toxics := []Fault{f}
	if f.Stream == both {
		up, down := f, f
		up.Name, up.Stream = f.Name+"_up", "upstream"
		down.Name, down.Stream = f.Name+"_down", "downstream"
		toxics = []Fault{up, down}
	}
	var names []string
	for _, tx := range toxics {
		body, err := json.Marshal(tx)
		if err != nil {
			return err
		}
		if _, err := p.p.Toxics.AddToxicJson(bytes.NewReader(body)); err != nil {
			for _, n := range names {
				_ = p.p.Toxics.RemoveToxic(context.Background(), n)
			}
			return fmt.Errorf("faulttest: %s on %s: %w", f.Name, p.p.Name, err)
		}
		names = append(names, tx.Name)
	}
	p.mu.Lock()
	p.faults[f.Name] = names
	p.mu.Unlock()
	return nil
}

// Remove takes a fault off; data held by it flows again.
func (p *Proxy) Remove(name string) {
	p.mu.Lock()
	names := p.faults[name]
	delete(p.faults, name)
	p.mu.Unlock()
	for _, n := range names {
		_ = p.p.Toxics.RemoveToxic(context.Background(), n)
	}
}

// Clear removes every fault.
func (p *Proxy) Clear() {
	p.mu.Lock()
	p.faults = map[string][]string{}
	p.mu.Unlock()
	p.p.Toxics.ResetToxics(context.Background())
}

// Cut closes every connection through the proxy (and stops accepting new
// ones until Restore): a dependency that went away.
func (p *Proxy) Cut() { p.p.Stop() }

// Restore accepts connections again after Cut, on the same port.
func (p *Proxy) Restore() error {
	if p.p.Enabled {
		return nil
	}
	return p.p.Start()
}

// Stop removes the faults and closes the proxy and its connections.
func (p *Proxy) Stop() {
	p.Clear()
	p.p.Stop()
}
