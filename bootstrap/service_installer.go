package bootstrap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
)

// ServiceInstaller prepares the worker's account and directories, writes its systemd unit and
// environment file, and (re)starts it with systemctl.
type ServiceInstaller struct {
	// Runner runs useradd and systemctl.
	Runner CommandRunner
	// LookupUser finds an account (user.Lookup in production).
	LookupUser func(name string) (*user.User, error)
	// Steps runs or prints each step.
	Steps *StepLog
	// Chown changes file ownership (os.Lchown in production); skipped when nil.
	Chown func(path string, uid, gid int) error
}

// UnitPath returns where the unit for c is written.
func UnitPath(c Config) string {
	return filepath.Join(c.SystemdDir, c.ServiceName+".service")
}

// Install sets up and starts the service for c (with ServiceSettings applied). binaryChanged
// says whether the worker binary was just replaced: a running service is then restarted.
func (s *ServiceInstaller) Install(ctx context.Context, c Config, binaryChanged bool) error {
	c = c.ServiceSettings()
	uid, gid, err := s.ensureUser(ctx, c)
	if err != nil {
		return err
	}
	for _, dir := range []string{c.CacheDirectory, c.AppendOnlyCachesBasePath} {
		dir := dir
		if err := s.Steps.Do(fmt.Sprintf("create %s owned by %s", dir, userOrRoot(c.User)), func() error {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			return s.chown(dir, uid, gid)
		}); err != nil {
			return fmt.Errorf("creating %s: %w", dir, err)
		}
	}
	if c.AuthTokenFile != "" && c.User != "" && c.User != "root" {
		if err := s.Steps.Do(fmt.Sprintf("make %s readable by group %s only (0640)", c.AuthTokenFile, c.User), func() error {
			if err := s.chown(c.AuthTokenFile, 0, gid); err != nil {
				return err
			}
			return os.Chmod(c.AuthTokenFile, 0o640)
		}); err != nil {
			return fmt.Errorf("token file: %w", err)
		}
	}
	unit := SystemdUnit{
		ExecPath: c.InstallPath, Args: c.WorkerArgs, User: c.User, EnvironmentFile: c.EnvironmentFile,
		DrainTimeout: c.DrainTimeout, Settings: c.WorkerSettings(),
	}
	unitPath := UnitPath(c)
	_, statErr := os.Stat(unitPath)
	preexisting := statErr == nil
	envChanged, err := s.writeFile(c.EnvironmentFile, unit.Environment(), 0o640, 0, gid)
	if err != nil {
		return err
	}
	unitChanged, err := s.writeFile(unitPath, unit.Render(), 0o644, -1, -1)
	if err != nil {
		return err
	}
	service := c.ServiceName + ".service"
	cmds := []Command{{Name: "systemctl", Args: []string{"daemon-reload"}}}
	if preexisting && (binaryChanged || envChanged || unitChanged) {
		// Restart a running worker onto the new binary or settings; SIGTERM drains it first.
		cmds = append(cmds, Command{Name: "systemctl", Args: []string{"try-restart", service}})
	}
	cmds = append(cmds, Command{Name: "systemctl", Args: []string{"enable", "--now", service}})
	for _, cmd := range cmds {
		if err := s.Steps.Do("run "+cmd.String(), func() error { return s.Runner.Run(ctx, cmd) }); err != nil {
			return err
		}
	}
	return nil
}

// ensureUser returns the uid and gid the worker runs as, creating the account if asked to.
// On a dry run of an account still to be created it returns -1, -1.
func (s *ServiceInstaller) ensureUser(ctx context.Context, c Config) (int, int, error) {
	if c.User == "" || c.User == "root" {
		return 0, 0, nil
	}
	u, err := s.LookupUser(c.User)
	if err != nil {
		var unknown user.UnknownUserError
		if !errors.As(err, &unknown) {
			return 0, 0, fmt.Errorf("looking up user %s: %w", c.User, err)
		}
		if !c.CreateUser {
			return 0, 0, fmt.Errorf("user %s does not exist (pass --create-user or create it)", c.User)
		}
		home := filepath.Join("/var/lib", c.ServiceName)
		cmd := Command{Name: "useradd", Args: []string{"--system", "--user-group", "--create-home",
			"--home-dir", home, "--shell", "/usr/sbin/nologin", c.User}}
		if err := s.Steps.Do("run "+cmd.String(), func() error { return s.Runner.Run(ctx, cmd) }); err != nil {
			return 0, 0, fmt.Errorf("creating user %s: %w", c.User, err)
		}
		if s.Steps.DryRun {
			return -1, -1, nil
		}
		if u, err = s.LookupUser(c.User); err != nil {
			return 0, 0, fmt.Errorf("looking up user %s after creating it: %w", c.User, err)
		}
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("user %s has non-numeric uid %q / gid %q", c.User, u.Uid, u.Gid)
	}
	return uid, gid, nil
}

func (s *ServiceInstaller) chown(path string, uid, gid int) error {
	if s.Chown == nil || uid < 0 {
		return nil
	}
	return s.Chown(path, uid, gid)
}

// writeFile replaces path with content atomically when it differs, reporting whether it did.
// uid/gid of -1 leave ownership alone.
func (s *ServiceInstaller) writeFile(path, content string, mode os.FileMode, uid, gid int) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, []byte(content)) {
		s.Steps.Note(path + " is up to date")
		return false, nil
	}
	desc := fmt.Sprintf("write %s (mode %#o):\n%s", path, mode, indent(content))
	err := s.Steps.Do(desc, func() error {
		dir := filepath.Dir(path)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		if _, err := tmp.WriteString(content); err != nil {
			tmp.Close()
			return err
		}
		if err := tmp.Chmod(mode); err != nil {
			tmp.Close()
			return err
		}
		if err := tmp.Close(); err != nil {
			return err
		}
		if gid >= 0 {
			if err := s.chown(tmp.Name(), uid, gid); err != nil {
				return err
			}
		}
		return os.Rename(tmp.Name(), path)
	})
	if err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	return true, nil
}

func indent(s string) string {
	var b bytes.Buffer
	for _, line := range bytes.SplitAfter([]byte(s), []byte("\n")) {
		if len(line) > 0 {
			b.WriteString("    | ")
			b.Write(line)
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

func userOrRoot(u string) string {
	if u == "" {
		return "root"
	}
	return u
}
