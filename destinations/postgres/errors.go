package postgres

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/backflowhq/backflow/destinations"
)

// classify turns an error of the server or of the connection into the error kinds
// destinations.Wrap acts on. The transaction did not commit (or its commit is in doubt,
// and a replay is harmless), so nothing is acknowledged whatever the kind:
//
//   - the connection was refused, dropped or timed out; the server is shutting down,
//     out of resources, or chose this transaction as a deadlock or serialization victim;
//     a lock wait timed out: *destinations.RetryableError.
//   - bad credentials (class 28: 28P01, 28000) and permission denied (42501): a
//     *destinations.PermanentError that Wrap does not split (its Status says 401 / 403,
//     as an HTTP receiver would), so the destination fails and no message is rejected.
//   - a data error (class 22: a value the column's type cannot hold, a string with NUL,
//     an invalid JSON text) or a constraint of the table (class 23: a NOT NULL or CHECK
//     added by hand): a splittable *destinations.PermanentError: Wrap bisects the batch
//     until the messages at fault are alone, and rejects just those.
//   - anything else (an undefined table or schema, a syntax error): a plain error that
//     fails the destination without retries.
func (d *Destination) classify(ctx context.Context, doing string, err error) error {
	wrapped := fmt.Errorf("postgres %s: %s: %w", d.location, doing, err)
	if ctx.Err() != nil {
		// Ours to stop: the caller's cancellation, or Wrap's timeout of this attempt
		// (which Wrap itself turns into a retry).
		return fmt.Errorf("%w (%w)", wrapped, ctx.Err())
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		code := pe.Code
		switch {
		case code == "42501":
			return &destinations.PermanentError{Err: fmt.Errorf("%w (grant the role the privileges it needs: backflow check lists them)", wrapped), Status: http.StatusForbidden}
		case strings.HasPrefix(code, "28"):
			return &destinations.PermanentError{Err: wrapped, Status: http.StatusUnauthorized}
		case strings.HasPrefix(code, "22"), strings.HasPrefix(code, "23"):
			return &destinations.PermanentError{Err: wrapped}
		case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"), strings.HasPrefix(code, "57P"),
			code == "40001", code == "40P01", code == "55P03", code == "57014", code == "58030":
			return &destinations.RetryableError{Err: wrapped}
		}
		return wrapped
	}
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	if errors.As(err, &certErr) || errors.As(err, &unknownAuth) || errors.As(err, &hostErr) || errors.As(err, &invalid) {
		return wrapped // a misconfiguration: retrying cannot fix it
	}
	// The rest is the connection's: refused, reset, closed mid-transaction (an
	// unexpected EOF), a dial timeout. Worth another try on a new connection (the pool
	// drops a broken one).
	return &destinations.RetryableError{Err: wrapped}
}
