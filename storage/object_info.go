package storage

import "time"

// ObjectInfo describes one object in an ObjectBucket.
type ObjectInfo struct {
	// Size is the object's length in bytes.
	Size int64
	// Time is when the bucket's lifecycle rule starts counting the object's age: the last
	// modification on S3 (which a copy in place resets), the custom time on GCS.
	Time time.Time
}
