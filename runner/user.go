package runner

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
)

// User is the unprivileged identity actions run as (Config.RunAs): a user id, its primary
// group id, and no supplementary groups.
type User struct {
	UID uint32
	GID uint32
}

// String returns "UID:GID".
func (u User) String() string { return fmt.Sprintf("%d:%d", u.UID, u.GID) }

// ParseUser resolves the --run-as-user value spec: a user name, a numeric user id, either one
// followed by ":GROUP" (a group name or numeric id). Without a group, the user's primary group
// from the user database is used, or the user id itself for a numeric id unknown to it. The
// root user (uid 0) is refused: running actions as root is what leaving the flag empty does.
func ParseUser(spec string) (User, error) {
	name, group, hasGroup := strings.Cut(spec, ":")
	if name == "" || hasGroup && group == "" {
		return User{}, fmt.Errorf("invalid user %q: want NAME, UID, NAME:GROUP or UID:GID", spec)
	}
	var u User
	var primary string
	if id, err := strconv.ParseUint(name, 10, 32); err == nil {
		u.UID = uint32(id)
		primary = name
		if pw, err := user.LookupId(name); err == nil {
			primary = pw.Gid
		}
	} else {
		pw, err := user.Lookup(name)
		if err != nil {
			return User{}, fmt.Errorf("invalid user %q: %v", spec, err)
		}
		id, err := strconv.ParseUint(pw.Uid, 10, 32)
		if err != nil {
			return User{}, fmt.Errorf("invalid user %q: non-numeric uid %q", spec, pw.Uid)
		}
		u.UID = uint32(id)
		primary = pw.Gid
	}
	if hasGroup {
		primary = group
		if _, err := strconv.ParseUint(group, 10, 32); err != nil {
			gr, err := user.LookupGroup(group)
			if err != nil {
				return User{}, fmt.Errorf("invalid user %q: %v", spec, err)
			}
			primary = gr.Gid
		}
	}
	gid, err := strconv.ParseUint(primary, 10, 32)
	if err != nil {
		return User{}, fmt.Errorf("invalid user %q: non-numeric gid %q", spec, primary)
	}
	u.GID = uint32(gid)
	if u.UID == 0 {
		return User{}, fmt.Errorf("invalid user %q: actions must not run as root (uid 0); leave --run-as-user empty to run them as the worker's own user", spec)
	}
	return u, nil
}

// CheckUnreadable returns an error when u may read the file at path according to its owner,
// group and mode (supplementary groups aside: actions run with none). The worker checks its
// token file with it.
func (u User) CheckUnreadable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("cannot read the owner of %s", path)
	}
	mode := fi.Mode().Perm()
	if st.Uid == u.UID && mode&0o400 != 0 || st.Gid == u.GID && mode&0o040 != 0 || mode&0o004 != 0 {
		return fmt.Errorf("%s (owner %d:%d, mode %04o) is readable by user %s, which runs actions: chmod 600 it, owned by the worker's user", path, st.Uid, st.Gid, mode, u)
	}
	return nil
}
