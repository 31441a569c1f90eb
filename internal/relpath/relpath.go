// Package relpath checks the relative paths REAPI messages carry: the output paths and the
// working directory of a Command, and the paths of an ActionResult's outputs.
//
// REAPI: "The path MUST NOT include a trailing slash, nor a leading slash, being a relative
// path" (Command.output_files, output_directories, output_paths; OutputFile.path and
// OutputSymlink.path "MUST NOT begin with a slash"). A path buildfleet accepts is therefore
// canonical: segments separated by single slashes, none of them empty, "." or "..", and no NUL.
// Two spellings of one path ("a/", "./a", "a//b") would otherwise be two different outputs,
// and ".." would name a file outside the action's directory.
package relpath

import (
	"errors"
	"strings"
)

// Errors Check returns; the text is meant to follow the path in a message
// ("output path \"a/\": trailing slash").
var (
	// ErrEmpty is an empty path (callers allow it where REAPI does: the whole working directory).
	ErrEmpty = errors.New("empty path")
	// ErrAbsolute is a path with a leading slash.
	ErrAbsolute = errors.New("absolute path")
	// ErrTrailingSlash is a path ending in a slash.
	ErrTrailingSlash = errors.New("trailing slash")
	// ErrEmptySegment is a path with two slashes in a row.
	ErrEmptySegment = errors.New("empty segment ('//')")
	// ErrDot is a path with a "." segment.
	ErrDot = errors.New("contains '.' segment")
	// ErrDotDot is a path with a ".." segment.
	ErrDotDot = errors.New("contains '..'")
	// ErrNUL is a path containing a NUL byte.
	ErrNUL = errors.New("contains NUL")
)

// Check returns nil when p is a canonical relative path, and otherwise the first of the
// errors above that applies.
func Check(p string) error {
	switch {
	case p == "":
		return ErrEmpty
	case strings.HasPrefix(p, "/"):
		return ErrAbsolute
	case strings.ContainsRune(p, 0):
		return ErrNUL
	}
	segments := strings.Split(p, "/")
	for i, s := range segments {
		switch s {
		case "..":
			return ErrDotDot
		case ".":
			return ErrDot
		case "":
			if i == len(segments)-1 {
				return ErrTrailingSlash
			}
			return ErrEmptySegment
		}
	}
	return nil
}

// ErrNotOneSegment is a directory entry name that contains a slash.
var ErrNotOneSegment = errors.New("not a single path segment")

// CheckName returns nil when name is a valid name of a Directory's entry (a file, directory or
// symlink node): REAPI's Directory "Every child in the directory must have a path of exactly
// one segment", so it is non-empty, not "." or "..", and has no slash and no NUL. Otherwise it
// returns ErrEmpty, ErrDot, ErrDotDot, ErrNotOneSegment or ErrNUL.
func CheckName(name string) error {
	switch {
	case name == "":
		return ErrEmpty
	case name == ".":
		return ErrDot
	case name == "..":
		return ErrDotDot
	case strings.ContainsRune(name, '/'):
		return ErrNotOneSegment
	case strings.ContainsRune(name, 0):
		return ErrNUL
	}
	return nil
}
