// Package objectstoretest starts real object store servers for tests, on 127.0.0.1 and free
// ports: versitygw (S3, POSIX backend on a temporary directory) and fake-gcs-server (GCS,
// file system backend). Both are installed into .tools/bin by scripts/install-test-deps.sh.
// Every server is stopped by the test that started it, by PID.
package objectstoretest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/buildfleet/buildfleet/internal/testproc"
)

// Credentials of the versitygw root user the tests use. They are dummies: versitygw is local.
const (
	AccessKey = "buildfleet-test-access"
	SecretKey = "buildfleet-test-secret-key"
	// Region is the region the S3 server and its clients use.
	Region = "us-east-1"
)

// Server is an object store server process started by a test.
type Server struct {
	t    testing.TB
	name string
	bin  string
	// argsFor gives the server's arguments for listening on addr.
	argsFor func(addr string) []string
	addr    string // 127.0.0.1:PORT
	log     string
	cmd     *exec.Cmd
	done    chan struct{}
	// DataDir is where the server keeps its objects, for tests that damage them at the
	// file level (fake-gcs-server: DataDir/BUCKET/OBJECT-NAME; empty for versitygw).
	DataDir string
}

// Addr returns the server's host:port on 127.0.0.1.
func (s *Server) Addr() string { return s.addr }

// Endpoint returns the server's base URL, http://127.0.0.1:PORT.
func (s *Server) Endpoint() string { return "http://" + s.addr }

// findTool returns the path of an installed test tool: .tools/bin of the module, else PATH.
// A missing tool fails a test (it skips a benchmark): scripts/install-test-deps.sh installs it.
func findTool(t testing.TB, name string) string {
	t.Helper()
	if dir, err := os.Getwd(); err == nil {
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				p := filepath.Join(dir, ".tools", "bin", name)
				if _, err := os.Stat(p); err == nil {
					return p
				}
				break
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	msg := fmt.Sprintf("%s is not installed (run scripts/install-test-deps.sh)", name)
	if _, ok := t.(*testing.B); ok {
		t.Skip(msg)
	}
	t.Fatal(msg)
	return ""
}

// StartS3 starts versitygw with a POSIX backend in a temporary directory and creates bucket.
func StartS3(t testing.TB, bucket string) *Server {
	t.Helper()
	bin := findTool(t, "versitygw")
	dir := t.TempDir()
	root, sidecar := filepath.Join(dir, "data"), filepath.Join(dir, "meta")
	for _, d := range []string{root, sidecar} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := &Server{t: t, name: "versitygw", bin: bin, log: filepath.Join(dir, "versitygw.log"),
		argsFor: func(addr string) []string {
			return []string{"--access", AccessKey, "--secret", SecretKey, "--region", Region, "--port", addr, "--quiet",
				"posix", "--sidecar", sidecar, root}
		}}
	s.startOnFreeAddr()
	t.Cleanup(s.Stop)
	if bucket != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := S3Client(s.Endpoint()).CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
			t.Fatalf("creating S3 bucket %s: %v", bucket, err)
		}
	}
	return s
}

// S3Client returns a plain S3 client of the server at endpoint with the test credentials, for
// tests to look at and change objects behind buildfleet's back.
func S3Client(endpoint string) *s3.Client {
	return s3.New(s3.Options{
		Region:                     Region,
		BaseEndpoint:               aws.String(endpoint),
		UsePathStyle:               true,
		Credentials:                credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

// S3Env returns the environment a scheduler process needs to reach the server with the test
// credentials and without ever asking an instance metadata service.
func S3Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + SecretKey,
		"AWS_REGION=" + Region,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE=/dev/null",
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null",
	}
}

// StartGCS starts fake-gcs-server with a file system backend in a temporary directory and
// creates bucket. Clients reach it through STORAGE_EMULATOR_HOST=Addr().
func StartGCS(t testing.TB, bucket string) *Server {
	t.Helper()
	bin := findTool(t, "fake-gcs-server")
	dir := t.TempDir()
	s := &Server{t: t, name: "fake-gcs-server", bin: bin, log: filepath.Join(dir, "fake-gcs-server.log"),
		argsFor: func(addr string) []string {
			_, port, _ := net.SplitHostPort(addr)
			return []string{"-scheme", "http", "-host", "127.0.0.1", "-port", port, "-public-host", addr,
				"-external-url", "http://" + addr, "-backend", "filesystem", "-filesystem-root", filepath.Join(dir, "data"), "-log-level", "error"}
		},
		DataDir: filepath.Join(dir, "data")}
	s.startOnFreeAddr()
	t.Cleanup(s.Stop)
	if bucket != "" {
		body, _ := json.Marshal(map[string]string{"name": bucket})
		resp, err := http.Post(s.Endpoint()+"/storage/v1/b?project=buildfleet-test", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("creating GCS bucket %s: %v", bucket, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("creating GCS bucket %s: %s", bucket, resp.Status)
		}
	}
	return s
}

// startOnFreeAddr starts the server on a free address. A port handed out as free can be taken
// by another process before the server binds it (the server then exits at start): it tries
// again on another one, up to three times.
func (s *Server) startOnFreeAddr() {
	s.t.Helper()
	var err error
	for range 3 {
		s.addr = testproc.FreeAddr(s.t)
		if err = s.start(); err == nil {
			return
		}
	}
	s.t.Fatal(err)
}

// Start starts the server process (again, after Stop, on the same address and data) and waits
// until it listens.
func (s *Server) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatal(err)
	}
}

// start starts the server process on s.addr and waits until that process itself listens there
// (a dial could reach another process that holds the port).
func (s *Server) start() error {
	f, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, s.argsFor(s.addr)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("starting %s: %v", s.name, err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	done := s.done
	go func() { cmd.Wait(); f.Close(); close(done) }()
	deadline := time.Now().Add(15 * time.Second)
	for !testproc.Listening(cmd.Process.Pid, s.addr) {
		select {
		case <-done:
			s.cmd = nil
			b, _ := os.ReadFile(s.log)
			return fmt.Errorf("%s exited at start on %s:\n%s", s.name, s.addr, b)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("%s does not listen on %s", s.name, s.addr)
		}
	}
	return nil
}

// Stop stops the server process by its PID (SIGCONT in case it was paused, SIGTERM, then
// SIGKILL after 5 s) and waits for it. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	testproc.Stop(s.cmd, s.done)
	s.cmd = nil
}

// Pause freezes the server (SIGSTOP): connections are accepted by the kernel but nothing is
// answered, as with a hung or unreachable object store. It returns once every thread of the
// server is stopped.
func (s *Server) Pause() { testproc.Freeze(s.t, s.cmd.Process.Pid) }

// Resume lets a paused server go on (SIGCONT).
func (s *Server) Resume() { syscall.Kill(s.cmd.Process.Pid, syscall.SIGCONT) }
