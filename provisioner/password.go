package provisioner

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
)

// scramIterations is the PBKDF2 work factor of tenant roles' SCRAM
// verifiers. PostgreSQL's default, 4096, slows guessing of human passwords;
// a tenant's password is 192 random bits (catalog.newPassword), which no
// amount of guessing finds, so stretching protects nothing while every new
// connection pays for it. The router opens a connection on each pool-cache
// miss, and at 4096 iterations the key derivation alone is about 2 ms of CPU
// per login. PostgreSQL 16 makes the same trade configurable
// (scram_iterations); the verifier below works on any version.
const scramIterations = 16

// scramVerifier returns the SCRAM-SHA-256 secret PostgreSQL stores for
// password (RFC 5802, RFC 7677), in the form CREATE/ALTER ROLE ... PASSWORD
// accepts as already encrypted. The plaintext never reaches the server, so
// no statement log or pg_stat_activity row can show it.
func scramVerifier(password string) string {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	salted, err := pbkdf2.Key(sha256.New, password, salt, scramIterations, sha256.Size)
	if err != nil {
		panic(err) // only for parameters out of FIPS range, which these are not
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", scramIterations, b64(salt), b64(storedKey[:]), b64(serverKey))
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}
