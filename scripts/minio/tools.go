//go:build tools

// The command scripts/minio/build.sh builds; this file only makes `go mod tidy` keep its modules.
package tools

import _ "github.com/minio/minio"
