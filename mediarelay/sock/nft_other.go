//go:build !linux

package sock

import (
	"errors"
	"fmt"
	"strings"
)

// RunNft fails outside Linux: nftables is Linux's.
func RunNft(_ string, args ...string) ([]byte, error) {
	return nil, fmt.Errorf("nft %s: nftables needs Linux: %w", strings.Join(args, " "), errors.ErrUnsupported)
}
