// Command certprobe says whether crypto/x509 finds system roots where it runs. The image
// test runs it, built static like the services, inside an image's root filesystem: the
// services get their roots the same way (they embed no fallback roots), so what it finds
// is what they find.
package main

import (
	"crypto/x509"
	"fmt"
	"os"
)

func main() {
	pool, err := x509.SystemCertPool()
	switch {
	case err != nil:
		fmt.Println("error:", err)
		os.Exit(1)
	case pool.Equal(x509.NewCertPool()):
		fmt.Println("empty")
		os.Exit(1)
	}
	fmt.Println("non-empty")
}
