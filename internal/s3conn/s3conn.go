// Package s3conn builds S3 clients from backflow's S3 settings (shared by the S3 source,
// the S3 state store and the s3 destination) and turns S3 failures into one clear line.
package s3conn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"

	"github.com/backflowhq/backflow/config"
)

// ParseURL splits s3://bucket/prefix. ok is false when u is not an s3:// URL.
func ParseURL(u string) (bucket, prefix string, ok bool) {
	rest, found := strings.CutPrefix(u, "s3://")
	if !found {
		return "", "", false
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	return bucket, prefix, bucket != ""
}

// IsURL tells whether u names an S3 location.
func IsURL(u string) bool { return strings.HasPrefix(u, "s3://") }

// New returns a client for bucket. Without a configured region it asks the bucket's
// region (GetBucketRegion) and falls back to us-east-1. Throttling and 5xx answers are
// retried by the SDK's standard retryer with up to maxAttempts attempts (0: 5).
func New(ctx context.Context, opts config.S3Options, bucket string, maxAttempts int) (*s3.Client, error) {
	cfg, err := AWSConfig(ctx, opts, maxAttempts)
	if err != nil {
		return nil, err
	}
	region := cfg.Region
	clientOpts := func(o *s3.Options) {
		if opts.Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.Endpoint)
		}
		o.UsePathStyle = opts.PathStyle
		// Checksums on every request cost CPU and are not understood by every
		// S3-compatible store; ask for them only where an operation requires them.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	}
	client := s3.NewFromConfig(cfg, clientOpts)
	if opts.Region == "" && opts.Endpoint == "" && bucket != "" {
		found, err := manager.GetBucketRegion(ctx, client, bucket)
		if err == nil && found != "" && found != region {
			cfg.Region = found
			client = s3.NewFromConfig(cfg, clientOpts)
		}
	}
	return client, nil
}

// AWSConfig is the SDK configuration of opts, for any AWS service reached with an S3
// location's settings (S3 itself, and the SQS queue of a source's event discovery):
// region (us-east-1 when unset), credentials from auth (the default chain, static keys,
// or a role assumed through STS, at opts.Endpoint when set), and the standard retryer
// with up to maxAttempts attempts (0: 5). It does not set any service's endpoint.
func AWSConfig(ctx context.Context, opts config.S3Options, maxAttempts int) (aws.Config, error) {
	if maxAttempts <= 0 {
		maxAttempts = 5
	}
	loadOpts := []func(*awsconfig.LoadOptions) error{
		// The SDK's own log lines (such as its IMDS fallback warning) would bypass
		// backflow's logger; failures reach the user as errors instead.
		awsconfig.WithLogger(logging.Nop{}),
		awsconfig.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) { o.MaxAttempts = maxAttempts })
		}),
	}
	region := opts.Region
	if region == "" {
		region = "us-east-1"
	}
	loadOpts = append(loadOpts, awsconfig.WithRegion(region))
	switch opts.Auth.Mode {
	case "keys":
		loadOpts = append(loadOpts, awsconfig.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(opts.Auth.AccessKeyID, opts.Auth.SecretAccessKey, opts.Auth.SessionToken)))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("loading AWS configuration: %w", err)
	}
	if opts.Auth.Mode == "role" {
		stsClient := sts.NewFromConfig(cfg, func(o *sts.Options) {
			if opts.Endpoint != "" {
				o.BaseEndpoint = aws.String(opts.Endpoint)
			}
		})
		name := opts.Auth.SessionName
		if name == "" {
			name = "backflow"
		}
		provider := stscreds.NewAssumeRoleProvider(stsClient, opts.Auth.RoleARN, func(o *stscreds.AssumeRoleOptions) {
			o.RoleSessionName = name
			if opts.Auth.ExternalID != "" {
				o.ExternalID = aws.String(opts.Auth.ExternalID)
			}
		})
		cfg.Credentials = aws.NewCredentialsCache(provider)
	}
	return cfg, nil
}

// Describe turns an S3 error into one clear line about bucket (and key, when not empty),
// keeping the original error for errors.Is/As. It never includes credentials.
func Describe(err error, bucket, key string) error {
	if err == nil {
		return nil
	}
	where := "s3://" + bucket
	if key != "" {
		where += "/" + key
	}
	return DescribeAt(err, where)
}

// DescribeAt is Describe for any AWS call made with AWSConfig's credentials: the line
// starts with where (a URL naming what was reached, such as a queue's).
func DescribeAt(err error, where string) error {
	if err == nil {
		return nil
	}
	// Credentials are fetched inside the S3 call: a failure to assume the role, or to
	// find any credentials, would otherwise read as an S3 answer ("access denied").
	// The default chain ends with the instance metadata service: its failure means no
	// credentials were found anywhere (also as the base credentials of a role).
	if op := operationError(err, "ec2imds"); op != nil {
		return &Error{Err: err, Msg: fmt.Sprintf("%s: no AWS credentials found (set auth.mode: keys, or provide them through the environment, a profile or an instance role)", where)}
	}
	if op := operationError(err, "STS"); op != nil {
		return &Error{Err: err, Msg: fmt.Sprintf("%s: assuming the role failed (STS %s): %s", where, op.OperationName, describeSTS(op.Err))}
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "NoSuchBucket":
			return &Error{Err: err, Msg: fmt.Sprintf("%s: no such bucket", where)}
		case "NoSuchKey", "NotFound":
			return &Error{Err: err, Msg: fmt.Sprintf("%s: no such object", where), NotFound: true}
		case "AccessDenied", "AllAccessDisabled":
			return &Error{Err: err, Msg: fmt.Sprintf("%s: access denied (check the credentials' permissions on the bucket)", where)}
		case "Forbidden":
			// The SDK's code for a 403 without a body (a HEAD request): the server did not
			// say whether the credentials are wrong or lack a permission.
			return &Error{Err: err, Msg: fmt.Sprintf("%s: access denied (wrong credentials, or missing permissions on the bucket)", where), Unexplained: true}
		case "InvalidAccessKeyId":
			return &Error{Err: err, Msg: fmt.Sprintf("%s: the access key id is not known to the server (bad credentials)", where)}
		case "SignatureDoesNotMatch":
			return &Error{Err: err, Msg: fmt.Sprintf("%s: the secret access key does not match the access key id (bad credentials)", where)}
		case "ExpiredToken", "InvalidToken":
			return &Error{Err: err, Msg: fmt.Sprintf("%s: the session token is expired or invalid", where)}
		case "PreconditionFailed":
			return &Error{Err: err, Msg: fmt.Sprintf("%s: precondition failed", where), Precondition: true}
		}
		return &Error{Err: err, Msg: fmt.Sprintf("%s: %s: %s", where, apiErr.ErrorCode(), apiErr.ErrorMessage())}
	}
	var respErr interface{ HTTPStatusCode() int }
	if errors.As(err, &respErr) {
		switch respErr.HTTPStatusCode() {
		case http.StatusNotFound:
			return &Error{Err: err, Msg: fmt.Sprintf("%s: not found", where), NotFound: true}
		case http.StatusForbidden:
			return &Error{Err: err, Msg: fmt.Sprintf("%s: access denied", where), Unexplained: true}
		case http.StatusPreconditionFailed:
			return &Error{Err: err, Msg: fmt.Sprintf("%s: precondition failed", where), Precondition: true}
		}
	}
	var netErr net.Error
	var urlErr *url.Error
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		// "dial tcp 127.0.0.1:9000: connect: connection refused" names the endpoint.
		return &Error{Err: err, Msg: fmt.Sprintf("%s: endpoint unreachable: %v", where, opErr)}
	}
	if errors.As(err, &urlErr) || errors.As(err, &netErr) {
		return &Error{Err: err, Msg: fmt.Sprintf("%s: endpoint unreachable: %v", where, rootCause(err))}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &Error{Err: err, Msg: fmt.Sprintf("%s: %v", where, err)}
}

// operationError finds, anywhere in err's chain, the failure of an operation of service
// (the outermost error is the S3 operation's own).
func operationError(err error, service string) *smithy.OperationError {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if op, ok := e.(*smithy.OperationError); ok && op.ServiceID == service {
			return op
		}
	}
	return nil
}

// describeSTS says why STS refused, in words; STS messages hold no secret.
func describeSTS(err error) string {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "AccessDenied":
			return "access denied: " + apiErr.ErrorMessage() + " (check the role's trust policy, the external id, and that the base credentials may call sts:AssumeRole)"
		case "InvalidClientTokenId":
			return "the base credentials' access key id is not known (bad credentials)"
		case "SignatureDoesNotMatch":
			return "the base credentials' secret access key does not match the access key id (bad credentials)"
		case "ExpiredToken":
			return "the base credentials' session token is expired"
		}
		return apiErr.ErrorCode() + ": " + apiErr.ErrorMessage()
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return "endpoint unreachable: " + opErr.Error()
	}
	return rootCause(err).Error()
}

func rootCause(err error) error {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err
		}
		err = next
	}
}

// Error is an S3 failure described in one line.
type Error struct {
	Err          error
	Msg          string
	NotFound     bool // the bucket or object does not exist
	Precondition bool // a conditional request failed
	// Unexplained is a 403 without an error code (the answer to a HEAD request has no
	// body): wrong credentials and missing permissions look alike, so the caller should
	// ask with a request whose answer says which.
	Unexplained bool
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

// DefaultTimeout bounds a single S3 call where a caller has no better bound.
const DefaultTimeout = 5 * time.Minute
