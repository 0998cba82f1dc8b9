package pgtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// NewTLSServer is NewServer speaking TLS only, on TCP (hostnossl is
// refused), with a certificate for hosts (default 127.0.0.1 and localhost)
// signed by a CA made for the test. It returns the server and the CA's
// certificate file, for sslrootcert. TLSDSN and TLSManagedDSN connect with
// sslmode=verify-full against that CA; DSN and ManagedDSN no longer work.
func NewTLSServer(t testing.TB, hosts ...string) (*Server, string) {
	t.Helper()
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "localhost"}
	}
	s := NewServer(t)
	if s.cluster == nil {
		t.Fatalf("pgtest: NewTLSServer needs a private cluster")
	}
	_ = s.ManagedDSN(t, "postgres") // the managed role, made while plain connections work
	caPEM, certPEM, keyPEM, err := certificates(hosts)
	if err != nil {
		t.Fatalf("pgtest: NewTLSServer: %v", err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	hba, err := os.ReadFile(filepath.Join(s.cluster.Dir(), "pg_hba.conf"))
	if err != nil {
		t.Fatalf("pgtest: NewTLSServer: %v", err)
	}
	for name, data := range map[string][]byte{
		"server.crt": certPEM, "server.key": keyPEM,
		// Unix-socket connections (the harness's own) stay as they were.
		"pg_hba.conf": append([]byte("hostnossl all all all reject\n"), hba...),
	} {
		if err := s.cluster.WriteFile(name, data, 0o600); err != nil {
			t.Fatalf("pgtest: NewTLSServer: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	err = s.withConn(ctx, func(conn *pgx.Conn) error {
		for _, set := range []string{"ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"} {
			if _, err := conn.Exec(ctx, "ALTER SYSTEM SET "+set); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("pgtest: NewTLSServer: %v", err)
	}
	s.Stop(t)
	s.Start(t)
	return s, caFile
}

// TLSDSN is DSN with sslmode=verify-full against caFile.
func (s *Server) TLSDSN(database, caFile string) string { return withTLS(s.DSN(database), caFile) }

// TLSManagedDSN is ManagedDSN with sslmode=verify-full against caFile.
func (s *Server) TLSManagedDSN(t testing.TB, database, caFile string) string {
	return withTLS(s.ManagedDSN(t, database), caFile)
}

func withTLS(dsn, caFile string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		panic(err)
	}
	q := u.Query()
	q.Set("sslmode", "verify-full")
	q.Set("sslrootcert", caFile)
	u.RawQuery = q.Encode()
	return u.String()
}

// certificates makes a CA and a server certificate for hosts signed by it, PEM-encoded.
func certificates(hosts []string) (caPEM, certPEM, keyPEM []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tenantplane test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: hosts[0]},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			leaf.IPAddresses = append(leaf.IPAddresses, ip)
		} else {
			leaf.DNSNames = append(leaf.DNSNames, h)
		}
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}
