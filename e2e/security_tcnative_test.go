package e2e_test

import (
	"io"
	"os"
	"path/filepath"
	"testing"
)

// tcnativeGlob finds Debian's netty-tcnative JNI library (package libnetty-tcnative-jni,
// installed by scripts/install-test-deps.sh).
const tcnativeGlob = "/usr/lib/*/jni/libnetty-tcnative.so"

// enableBazel4TLS lets Debian's bazel-bootstrap 4.2.3 in w open grpcs:// connections.
//
// Its server jar bundles Debian's Netty 4.1.48 without JdkAlpnApplicationProtocolNegotiator,
// so with the JDK TLS provider (what grpc-java's GrpcSslContexts picks on Java 9+ when
// io.netty.handler.ssl.OpenSsl is unavailable) SslContextBuilder.build fails with "JDK
// provider does not support ALPN protocol". The jar also bundles netty-tcnative 2.0.28's
// classes, and OpenSsl loads the native half with System.loadLibrary("netty_tcnative") from
// java.library.path. Debian ships that library (2.0.28, on OpenSSL 3) as libnetty-tcnative.so:
// copied (not symlinked: the JVM resolves links, and the library's JNI_OnLoad refuses a path
// without "netty_tcnative" in it) to libnetty_tcnative.so in a directory on the server's
// java.library.path, OpenSsl is available and gRPC negotiates ALPN through OpenSSL. The
// startup option goes in the workspace's .bazelrc so every command, shutdown included,
// reaches the same server.
func enableBazel4TLS(t *testing.T, w *workspace) {
	t.Helper()
	libs, _ := filepath.Glob(tcnativeGlob)
	if len(libs) == 0 {
		t.Fatalf("%s not found: Bazel 4.2.3 needs it for grpcs:// (run scripts/install-test-deps.sh)", tcnativeGlob)
	}
	dir := t.TempDir()
	copyFile(t, libs[0], filepath.Join(dir, "libnetty_tcnative.so"))
	write(t, filepath.Join(w.dir, ".bazelrc"), "startup --host_jvm_args=-Djava.library.path="+dir+"\n")
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
