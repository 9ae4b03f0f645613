package kafka

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
)

// TestTLS: with tls and ca_file, the brokers' certificate is verified against the CA;
// without the CA the handshake fails, and the Write is not retried.
func TestTLS(t *testing.T) {
	caPEM, serverCert := testCA(t)
	k := newCluster(t, kfake.TLS(&tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12}))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	k.client = []kgo.Opt{kgo.DialTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	o := k.options()
	o.CAFile, o.TLS = caFile, true
	d := k.dest(t, o)
	if err := d.(destinations.Checker).Check(ctxT(t)); err != nil {
		t.Fatalf("Check over TLS: %v", err)
	}
	msgs := destinationstest.Messages("tls", 20)
	if err := d.Write(ctxT(t), msgs); err != nil {
		t.Fatalf("Write over TLS: %v", err)
	}
	d.Close(ctxT(t))
	if n := len(k.records()); n != len(msgs) {
		t.Errorf("%d records over TLS, want %d", n, len(msgs))
	}

	// The system's roots do not know the test CA.
	o = k.options()
	o.TLS = true
	d = k.dest(t, o)
	defer d.Close(ctxT(t))
	err := d.(destinations.Checker).Check(ctxT(t))
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Check with an unknown CA = %v, want a certificate error", err)
	}
	start := time.Now()
	err = d.Write(ctxT(t), msgs)
	t.Logf("Write with an unknown CA, after %s: %v", time.Since(start), err)
	if err == nil || destinations.IsRetryable(err) || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Write with an unknown CA = %v, want a certificate error, not retried", err)
	}

	o = k.options()
	o.CAFile = filepath.Join(t.TempDir(), "missing.pem")
	if _, err := New(ctxT(t), testConfig(o), destinations.Env{}); err == nil || !strings.Contains(err.Error(), "ca_file") {
		t.Errorf("New with a missing ca_file = %v", err)
	}
}

// testCA returns a CA certificate (PEM) and a server certificate it signed for 127.0.0.1.
func testCA(t *testing.T) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "backflow test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}
}

// TestNotAuthorized: credentials that may read but not write the topic fail Check and
// fail the Write as a whole — an unsplittable *PermanentError, no reject.
func TestNotAuthorized(t *testing.T) {
	describe := kfake.ACL{Resource: kmsg.ACLResourceTypeTopic, Name: testTopic, Pattern: kmsg.ACLResourcePatternTypeLiteral,
		Operation: kmsg.ACLOperationDescribe, Allow: true}
	write := describe
	write.Operation = kmsg.ACLOperationWrite
	k := newCluster(t, kfake.EnableSASL(), kfake.EnableACLs(),
		kfake.Superuser(MechanismPlain, "admin", "admin"),
		kfake.User(MechanismPlain, "reader", "r", describe),
		kfake.User(MechanismPlain, "writer", "w", write),
		kfake.User(MechanismPlain, "nobody", "n"))
	k.client = []kgo.Opt{kgo.SASL(plain.Auth{User: "admin", Pass: "admin"}.AsMechanism())}
	user := func(name, pass string) destinations.Destination {
		o := k.options()
		o.SASL = SASL{Mechanism: MechanismPlain, Username: name, Password: pass}
		d := k.dest(t, o)
		t.Cleanup(func() { d.Close(ctxT(t)) })
		return d
	}

	writer := user("writer", "w")
	if err := writer.(destinations.Checker).Check(ctxT(t)); err != nil {
		t.Errorf("Check of a user allowed to write: %v", err)
	}
	if err := writer.Write(ctxT(t), destinationstest.Messages("acl", 3)); err != nil {
		t.Errorf("Write of a user allowed to write: %v", err)
	}

	reader := user("reader", "r")
	err := reader.(destinations.Checker).Check(ctxT(t))
	t.Logf("Check of a reader: %v", err)
	if err == nil || !strings.Contains(err.Error(), `user "reader" (PLAIN) may not write`) {
		t.Errorf("Check of a user who may not write = %v", err)
	}
	err = reader.Write(ctxT(t), destinationstest.Messages("acl-reader", 3))
	t.Logf("Write of a reader: %v", err)
	var pe *destinations.PermanentError
	if !errors.As(err, &pe) || destinations.Splittable(pe) || !strings.Contains(err.Error(), "may not write") {
		t.Errorf("Write of a user who may not write = %v, want an unsplittable *PermanentError", err)
	}

	nobody := user("nobody", "n")
	err = nobody.(destinations.Checker).Check(ctxT(t))
	t.Logf("Check of a user without ACLs: %v", err)
	if err == nil || !strings.Contains(err.Error(), "may not describe") {
		t.Errorf("Check of a user without any ACL = %v", err)
	}
	if n := len(k.records()); n != 3 {
		t.Errorf("%d records, want the writer's 3", n)
	}
}
