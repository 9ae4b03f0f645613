package s3conn

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/aws/smithy-go"
)

// sdkChain builds an error shaped like the SDK's when fetching credentials fails inside
// an S3 call: the S3 operation error wrapping the credential provider's.
func sdkChain(inner error) error {
	return &smithy.OperationError{ServiceID: "S3", OperationName: "ListObjectsV2",
		Err: fmt.Errorf("get identity: get credentials: failed to refresh cached credentials, %w", inner)}
}

func TestDescribeCredentialFailures(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"role refused", sdkChain(&smithy.OperationError{ServiceID: "STS", OperationName: "AssumeRole",
			Err: &smithy.GenericAPIError{Code: "AccessDenied", Message: "not authorized to perform sts:AssumeRole"}}),
			"s3://b/p/: assuming the role failed (STS AssumeRole): access denied: not authorized to perform sts:AssumeRole"},
		{"role with bad base key", sdkChain(&smithy.OperationError{ServiceID: "STS", OperationName: "AssumeRole",
			Err: &smithy.GenericAPIError{Code: "InvalidClientTokenId", Message: "The security token included in the request is invalid."}}),
			"s3://b/p/: assuming the role failed (STS AssumeRole): the base credentials' access key id is not known (bad credentials)"},
		{"role without base credentials", sdkChain(&smithy.OperationError{ServiceID: "STS", OperationName: "AssumeRole",
			Err: fmt.Errorf("get identity: %w", &smithy.OperationError{ServiceID: "ec2imds", OperationName: "GetMetadata", Err: errors.New("access disabled")})}),
			"s3://b/p/: no AWS credentials found"},
		{"no credentials", sdkChain(&smithy.OperationError{ServiceID: "ec2imds", OperationName: "GetMetadata", Err: errors.New("request canceled")}),
			"s3://b/p/: no AWS credentials found"},
		{"refused connection", &smithy.OperationError{ServiceID: "S3", OperationName: "ListObjectsV2",
			Err: &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}, Err: syscall.ECONNREFUSED}},
			"s3://b/p/: endpoint unreachable: dial tcp 127.0.0.1:9: connection refused"},
	}
	for _, c := range cases {
		err := Describe(c.err, "b", "p/")
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("%s: want *Error, got %T", c.name, err)
		}
		if !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%s: %q, want prefix %q", c.name, err, c.want)
		}
		if !errors.Is(err, c.err) {
			t.Errorf("%s: the original error is lost", c.name)
		}
	}
}
