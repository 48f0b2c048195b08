// Package sdk carries the C header patch authors include, lucos/patch.h,
// embedded so that the lucos binary builds patches from any directory.
package sdk

import _ "embed"

// PatchHeader is include/lucos/patch.h.
//
//go:embed include/lucos/patch.h
var PatchHeader []byte
