package catalog

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// DescribeServerError says what went wrong on a tenant server in words for
// an operator: PostgreSQL's message, or why the connection failed. It never
// includes the DSN.
func DescribeServerError(err error) string {
	if CatalogDown(err) {
		// The catalog, met on the way (a server's DSN, say): not the server.
		return MessageOf(err) + " (" + ConnectReason(err) + ")"
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Message
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return "cannot connect: " + ConnectReason(err)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		return "the connection was lost (closed or reset by the server or the network): " + err.Error()
	}
	return err.Error()
}

// ConnectReason says in a few words why a connection to a server failed,
// without the DSN (pgx's messages can include the host and user, never the
// password, but these are kept short and uniform).
func ConnectReason(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28P01", "28000":
			return "authentication failed"
		case "3D000":
			return "database does not exist"
		}
		return pgErr.Message
	}
	if reason, ok := tlsReason(err); ok {
		return reason
	}
	var netErr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timed out"
	case strings.Contains(err.Error(), "connection refused"):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "the connection was reset or closed"
	}
	return "unreachable"
}

// tlsReason says why a TLS handshake with a server (sslmode=verify-ca or
// verify-full) failed, with what to do about it.
func tlsReason(err error) (string, bool) {
	var host x509.HostnameError
	var authority x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &host):
		names := slices.Clone(host.Certificate.DNSNames)
		for _, ip := range host.Certificate.IPAddresses {
			names = append(names, ip.String())
		}
		return fmt.Sprintf("the server's TLS certificate is not valid for host %s (it names %s): connect by a name the certificate holds, or give the server a certificate for this host",
			host.Host, strings.Join(names, ", ")), true
	case errors.As(err, &authority):
		issuer := "unknown"
		if authority.Cert != nil {
			issuer = authority.Cert.Issuer.String()
		}
		return fmt.Sprintf("the server's TLS certificate is not signed by the CA in sslrootcert (its issuer: %s): give the CA that signed it", issuer), true
	case errors.As(err, &invalid):
		return "the server's TLS certificate is invalid: " + invalid.Error(), true
	case strings.Contains(err.Error(), "server refused TLS connection"):
		return "the server does not accept TLS, which the DSN's sslmode requires", true
	}
	return "", false
}
