package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/buildfleet/buildfleet/internal/metrics"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServesMetricsAndHealth(t *testing.T) {
	reg := metrics.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "buildfleet_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	var sick atomic.Bool
	s, err := metrics.Listen("127.0.0.1:0", reg, func() error {
		if sick.Load() {
			return errors.New("storage unavailable")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() { s.Shutdown(context.Background()) })

	code, body := get(t, "http://"+s.Addr()+"/metrics")
	if code != 200 || !strings.Contains(body, "buildfleet_test_total 3") || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("/metrics = %d %q", code, body)
	}
	if code, body := get(t, "http://"+s.Addr()+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	sick.Store(true)
	if code, body := get(t, "http://"+s.Addr()+"/healthz"); code != 503 || !strings.Contains(body, "storage unavailable") {
		t.Fatalf("/healthz when sick = %d %q", code, body)
	}
}
