package runner

import (
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// checkSymlinkTarget enforces the input symlink policy used unless Config.AllowEscapingSymlinks
// is set: the symlink at rel (relative to the input root, "a/b/link") must resolve inside the
// input root whatever the other symlinks of the tree are. Its target must be relative, made of
// leading ".." components (no more than the directories above the link) followed by names
// only: a ".." after a name is refused, because the name may itself be a symlink and the ".."
// would then climb from wherever that one leads. "." and empty components are ignored.
// Refusals are INVALID_ARGUMENT.
func checkSymlinkTarget(rel, target string) error {
	if strings.HasPrefix(target, "/") {
		return status.Errorf(codes.InvalidArgument, "Input symlink %q has an absolute target %q, which escapes the input root (the worker allows only relative targets inside it)", rel, target)
	}
	depth := strings.Count(rel, "/") // Directories between the root and the link.
	names := 0
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "", ".":
		case "..":
			if names > 0 {
				return status.Errorf(codes.InvalidArgument, "Input symlink %q has a target %q with \"..\" after a name, which may escape the input root", rel, target)
			}
			depth--
			if depth < 0 {
				return status.Errorf(codes.InvalidArgument, "Input symlink %q has a target %q leading outside the input root", rel, target)
			}
		default:
			names++
		}
	}
	return nil
}
