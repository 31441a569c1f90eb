package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// sandboxInitArg0 is argv[0] of the worker binary re-executed as the init process of an
// action's namespaces (see SandboxNamespaces).
const sandboxInitArg0 = "buildfleet-sandbox-init"

// Descriptors of the sandbox init: its configuration is read from sandboxConfigFD, and a
// failure to set up or to start the command is written to sandboxErrorFD, which is closed
// without a word once the command runs.
const (
	sandboxConfigFD = 3
	sandboxErrorFD  = 4
)

// sandboxConfig is what the sandbox init is told to do.
type sandboxConfig struct {
	Path       string
	Argv       []string
	Env        []string
	Dir        string
	User       *User
	NetworkOff bool
	Hide       []string
	// Probe sets the sandbox up and exits 0 without running anything (New's check).
	Probe bool
}

// init turns any binary linking this package into the sandbox init when it is started under
// sandboxInitArg0, before main runs.
func init() {
	if len(os.Args) > 0 && os.Args[0] == sandboxInitArg0 {
		os.Exit(sandboxInit())
	}
}

// sandboxFail writes the failure to sandboxErrorFD as "ERRNO MESSAGE".
func sandboxFail(errno syscall.Errno, format string, args ...any) int {
	f := os.NewFile(sandboxErrorFD, "error")
	fmt.Fprintf(f, "%d %s", int(errno), fmt.Sprintf(format, args...))
	f.Close()
	return 127
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	errors.As(err, &e)
	return e
}

// sandboxInit runs as PID 1 of the action's PID namespace: it makes the mounts private, mounts
// a fresh /proc, hides the configured directories, brings the loopback interface up in a new
// network namespace, starts the command as the action user and reaps every process until the
// command exits, then exits with its status (128+signal when killed). Its own exit makes the
// kernel kill whatever is left in the namespace.
func sandboxInit() int {
	unix.CloseOnExec(sandboxConfigFD)
	unix.CloseOnExec(sandboxErrorFD)
	cf := os.NewFile(sandboxConfigFD, "config")
	b, err := io.ReadAll(cf)
	cf.Close()
	var cfg sandboxConfig
	if err == nil {
		err = json.Unmarshal(b, &cfg)
	}
	if err != nil {
		return sandboxFail(0, "reading the sandbox configuration: %v", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return sandboxFail(errnoOf(err), "making mounts private: %v", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return sandboxFail(errnoOf(err), "mounting /proc: %v", err)
	}
	for _, h := range cfg.Hide {
		if err := hide(h); err != nil {
			return sandboxFail(errnoOf(err), "hiding %s: %v", h, err)
		}
	}
	if cfg.NetworkOff {
		if err := loopbackUp(); err != nil {
			return sandboxFail(errnoOf(err), "bringing the loopback interface up: %v", err)
		}
	}
	if cfg.Probe {
		return 0
	}
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if cfg.User != nil {
		attr.Credential = &syscall.Credential{Uid: cfg.User.UID, Gid: cfg.User.GID, Groups: []uint32{}}
	}
	pid, err := syscall.ForkExec(cfg.Path, cfg.Argv, &syscall.ProcAttr{
		Dir:   cfg.Dir,
		Env:   cfg.Env,
		Files: []uintptr{0, 1, 2},
		Sys:   attr,
	})
	if err != nil {
		return sandboxFail(errnoOf(err), "fork/exec %s: %v", cfg.Path, err)
	}
	unix.Close(sandboxErrorFD)
	for {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(-1, &ws, 0, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 127
		}
		if got != pid {
			continue // An orphan reparented to us.
		}
		switch {
		case ws.Exited():
			return ws.ExitStatus()
		case ws.Signaled():
			return 128 + int(ws.Signal())
		default:
			return 127
		}
	}
}

// hide covers the directory or file at path: a directory with an empty read-only tmpfs, a
// file with /dev/null. A path that does not exist is left alone.
func hide(path string) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return unix.Mount("tmpfs", path, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=000,size=4k")
	}
	if err := unix.Mount("/dev/null", path, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	return unix.Mount("", path, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, "")
}

// loopbackUp sets the IFF_UP flag of "lo".
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// parseSandboxFailure splits what the init wrote to sandboxErrorFD.
func parseSandboxFailure(s string) (syscall.Errno, string) {
	n, msg, _ := strings.Cut(s, " ")
	e, _ := strconv.Atoi(n)
	return syscall.Errno(e), msg
}
