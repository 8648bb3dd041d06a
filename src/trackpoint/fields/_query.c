/* The wanted members of an urlencoded string (a query, or a form body), in C: the request path's native step for
 * trackpoint.fields.converters.PairParser, which calls it when the compiled build runs (trackpoint/_native.py) and
 * keeps its pure-Python code as the reference (tests/test_fields.py checks the two give the same result).
 *
 *     members(encoded: bytes, names: tuple[bytes, ...], keys: tuple[str, ...]) -> dict[str, str]
 *     printable(text: str) -> bool                  (str.isprintable, without the method call for ASCII text)
 *
 * `names` are the wanted names, UTF-8; `keys[i]` is the str that `names[i]` is stored under. Members are separated
 * by '&'; a member's name ends at its first '='; a member without '=' has the empty value. The first member of each
 * wanted name wins; the others are not read. Names and values are decoded as urllib.parse.unquote_to_bytes does
 * after '+' became a space: '%' and two hex digits is a byte, any other '%' stays as it is. A value is then decoded
 * from UTF-8 with surrogateescape (bytes that are not UTF-8 become lone surrogates, which no field accepts).
 *
 * Why by hand: the usual tracking query (a few plain ASCII members) cost about 6,900 instructions in the compiled
 * Python (a new str for every name, its hash, a set lookup); here a name is compared in place with the wanted ones,
 * and only a wanted member's value becomes an object. And every plain string value is checked for printable text,
 * which the compiled Python does through a method call of about 440 instructions for a short value.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Wanted names up to this many are remembered in a bit mask; more are looked up in the result. */
#define MASK_NAMES 64

static int
hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c |= 0x20; /* lower case */
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

/* Whether raw[0:size] needs decoding: it holds a '+' or a '%'. */
static int
escaped(const char *raw, Py_ssize_t size)
{
    for (Py_ssize_t i = 0; i < size; i++) {
        if (raw[i] == '+' || raw[i] == '%') {
            return 1;
        }
    }
    return 0;
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
/* The high bit of each byte of word that is zero, or 0 when none is. */
#define ZERO_BYTES(word) (((word) - ONES) & ~(word) & HIGHS)

/* Whether raw[0:size] is plain: ASCII, without '+' or '%' (the usual tracking query, whose members need no
 * decoding and whose values are ASCII). Eight bytes at a time. */
static int
plain(const char *raw, Py_ssize_t size)
{
    Py_ssize_t i = 0;
    for (; i + 8 <= size; i += 8) {
        uint64_t word;
        memcpy(&word, raw + i, 8);
        if ((word & HIGHS) || ZERO_BYTES(word ^ (ONES * '+')) || ZERO_BYTES(word ^ (ONES * '%'))) {
            return 0;
        }
    }
    for (; i < size; i++) {
        unsigned char c = (unsigned char)raw[i];
        if (c >= 0x80 || c == '+' || c == '%') {
            return 0;
        }
    }
    return 1;
}

/* A str of ASCII bytes: no decoder, since they are known to be ASCII. */
static PyObject *
ascii_text(const char *raw, Py_ssize_t size)
{
    PyObject *text = PyUnicode_New(size, 127);
    if (text != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(text), raw, (size_t)size);
    }
    return text;
}

/* Decodes raw[0:size] into out (at least size bytes); returns the decoded length. */
static Py_ssize_t
unquote(const char *raw, Py_ssize_t size, char *out)
{
    Py_ssize_t length = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        char c = raw[i];
        if (c == '+') {
            c = ' ';
        }
        else if (c == '%' && i + 2 < size) {
            int high = hex_digit((unsigned char)raw[i + 1]);
            int low = hex_digit((unsigned char)raw[i + 2]);
            if (high >= 0 && low >= 0) {
                c = (char)(high * 16 + low);
                i += 2;
            }
        }
        out[length++] = c;
    }
    return length;
}

static PyObject *
members(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyTuple_CheckExact(args[1]) || !PyTuple_CheckExact(args[2])
        || PyTuple_GET_SIZE(args[1]) != PyTuple_GET_SIZE(args[2])) {
        PyErr_SetString(PyExc_TypeError, "members(encoded: bytes, names: tuple[bytes, ...], keys: tuple[str, ...])");
        return NULL;
    }
    PyObject *names = args[1];
    PyObject *keys = args[2];
    Py_ssize_t count = PyTuple_GET_SIZE(names);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(names, i)) || !PyUnicode_CheckExact(PyTuple_GET_ITEM(keys, i))) {
            PyErr_SetString(PyExc_TypeError, "members(): names are bytes and keys str");
            return NULL;
        }
    }
    const char *text = PyBytes_AS_STRING(args[0]);
    Py_ssize_t end = PyBytes_GET_SIZE(args[0]);
    PyObject *found = PyDict_New();
    if (found == NULL || count == 0) {
        return found;
    }
    int is_plain = plain(text, end);
    uint64_t seen = 0;
    char *scratch = NULL; /* decoded names and values: never longer than the input */
    Py_ssize_t start = 0;
    while (start <= end) {
        const char *amp = memchr(text + start, '&', (size_t)(end - start));
        Py_ssize_t stop = amp == NULL ? end : amp - text;
        const char *equals = memchr(text + start, '=', (size_t)(stop - start));
        Py_ssize_t name_end = equals == NULL ? stop : equals - text;
        const char *name = text + start;
        Py_ssize_t name_size = name_end - start;
        if (!is_plain && escaped(name, name_size)) {
            if (scratch == NULL && (scratch = PyMem_Malloc((size_t)end + 1)) == NULL) {
                PyErr_NoMemory();
                goto error;
            }
            name_size = unquote(name, name_size, scratch);
            name = scratch;
        }
        Py_ssize_t i = 0;
        for (; i < count; i++) {
            PyObject *wanted = PyTuple_GET_ITEM(names, i);
            if (PyBytes_GET_SIZE(wanted) == name_size
                && (name_size == 0 || (PyBytes_AS_STRING(wanted)[0] == name[0]
                                       && memcmp(PyBytes_AS_STRING(wanted), name, (size_t)name_size) == 0))) {
                break;
            }
        }
        if (i < count) {
            PyObject *key = PyTuple_GET_ITEM(keys, i);
            int first;
            if (i < MASK_NAMES) {
                first = !(seen & ((uint64_t)1 << i));
                seen |= (uint64_t)1 << i;
            }
            else if ((first = PyDict_Contains(found, key)) < 0) {
                goto error;
            }
            else {
                first = !first;
            }
            if (first) {
                const char *value = equals == NULL ? text + stop : equals + 1;
                Py_ssize_t value_size = equals == NULL ? 0 : stop - name_end - 1;
                PyObject *decoded;
                if (is_plain) {
                    decoded = ascii_text(value, value_size);
                }
                else {
                    if (escaped(value, value_size)) {
                        if (scratch == NULL && (scratch = PyMem_Malloc((size_t)end + 1)) == NULL) {
                            PyErr_NoMemory();
                            goto error;
                        }
                        value_size = unquote(value, value_size, scratch);
                        value = scratch;
                    }
                    decoded = PyUnicode_DecodeUTF8(value, value_size, "surrogateescape");
                }
                if (decoded == NULL || PyDict_SetItem(found, key, decoded) < 0) {
                    Py_XDECREF(decoded);
                    goto error;
                }
                Py_DECREF(decoded);
            }
        }
        start = stop + 1;
    }
    PyMem_Free(scratch);
    return found;
error:
    PyMem_Free(scratch);
    Py_DECREF(found);
    return NULL;
}

static PyObject *
printable(PyObject *module, PyObject *text)
{
    (void)module;
    if (!PyUnicode_CheckExact(text)) {
        PyErr_SetString(PyExc_TypeError, "printable(text: str)");
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(text)) { /* str.isprintable's own answer: Unicode's categories */
        return PyObject_CallMethod(text, "isprintable", NULL);
    }
    const unsigned char *data = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t size = PyUnicode_GET_LENGTH(text);
    for (Py_ssize_t i = 0; i < size; i++) {
        if (data[i] < 0x20 || data[i] == 0x7f) { /* ASCII: the controls are the only characters not printable */
            Py_RETURN_FALSE;
        }
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"members", (PyCFunction)(void (*)(void))members, METH_FASTCALL,
     "The wanted members of an urlencoded string: members(encoded, names, keys) -> dict."},
    {"printable", printable, METH_O, "str.isprintable(): printable(text) -> bool."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "trackpoint.fields._query",
    .m_doc = "The wanted members of an urlencoded string, in C (the compiled build's PairParser).",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__query(void)
{
    return PyModuleDef_Init(&module);
}
