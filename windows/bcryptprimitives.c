/*
 * A stand-in bcryptprimitives.dll for Wine 8, which lacks ProcessPrng.
 * Rust's Windows standard library imports ProcessPrng from this DLL for
 * its random numbers (HashMap keys); without it a Rust program exits at
 * once with code 53 under Wine. Built by .ci/run with MinGW and found by
 * Wine through WINEPATH (see .cargo/config.toml). Not used on Windows.
 */
#include <windows.h>

/* advapi32's RtlGenRandom, exported as SystemFunction036. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
