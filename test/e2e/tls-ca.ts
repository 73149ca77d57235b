// A throwaway certificate authority for the end-to-end tests, made with the openssl CLI (Node
// can parse certificates but not issue them). Clients trust it through NODE_EXTRA_CA_CERTS or a
// `ca` option; nothing on the machine trusts it.
import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

export type Issued = { certPath: string; keyPath: string; cert: string; key: string };
export type TestCa = {
  /** The CA certificate (PEM file), for NODE_EXTRA_CA_CERTS. */
  caPath: string;
  caPem: string;
  /** A server certificate for these DNS names, signed by the CA. */
  issue(label: string, dnsNames: string[]): Promise<Issued>;
};

async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await execFileAsync("openssl", args, { cwd, timeout: 20_000 });
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`openssl ${args.join(" ")} failed: ${e.stderr ?? e.message}`);
  }
}

const EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/** Makes a CA in `dir` (files ca.pem, ca.key). P-256 keys: fast to make, accepted by Go and Node. */
export async function makeTestCa(dir: string, name = "Stowage e2e test CA"): Promise<TestCa> {
  const caPath = join(dir, "ca.pem");
  const caKey = join(dir, "ca.key");
  await openssl(
    ["req", "-x509", ...EC_KEY, "-keyout", caKey, "-out", caPath, "-days", "2", "-subj", `/CN=${name}`,
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    dir,
  );
  const caPem = await readFile(caPath, "utf8");
  let serial = 1;
  return {
    caPath,
    caPem,
    async issue(label, dnsNames) {
      const keyPath = join(dir, `${label}.key`);
      const csrPath = join(dir, `${label}.csr`);
      const certPath = join(dir, `${label}.pem`);
      const extPath = join(dir, `${label}.ext`);
      await openssl(["req", "-new", ...EC_KEY, "-keyout", keyPath, "-out", csrPath, "-subj", `/CN=${dnsNames[0] ?? label}`], dir);
      // Go refuses certificates that name their host only in the CN, so the names go in SANs.
      await writeFile(
        extPath,
        [
          `subjectAltName=${dnsNames.map((n) => `DNS:${n}`).join(",")}`,
          "basicConstraints=critical,CA:FALSE",
          "keyUsage=critical,digitalSignature",
          "extendedKeyUsage=serverAuth",
          "",
        ].join("\n"),
      );
      await openssl(
        ["x509", "-req", "-in", csrPath, "-CA", caPath, "-CAkey", caKey, "-set_serial", String(++serial), "-days", "2", "-sha256", "-extfile", extPath, "-out", certPath],
        dir,
      );
      return { certPath, keyPath, cert: await readFile(certPath, "utf8"), key: await readFile(keyPath, "utf8") };
    },
  };
}

/**
 * A self-signed P-256 certificate for signing tokens: distribution trusts a token whose x5c
 * chain ends in a certificate of its rootcertbundle, and this one is its own root.
 */
export async function makeSigningCert(dir: string, label: string): Promise<Issued & { der: Buffer }> {
  const keyPath = join(dir, `${label}.key`);
  const certPath = join(dir, `${label}.pem`);
  await openssl(["req", "-x509", ...EC_KEY, "-keyout", keyPath, "-out", certPath, "-days", "2", "-subj", `/CN=${label}`], dir);
  const cert = await readFile(certPath, "utf8");
  const b64 = cert.replace(/-----(BEGIN|END) CERTIFICATE-----/g, "").replace(/\s+/g, "");
  return { certPath, keyPath, cert, key: await readFile(keyPath, "utf8"), der: Buffer.from(b64, "base64") };
}
