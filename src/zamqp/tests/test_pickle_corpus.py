"""A corpus of malicious and malformed pickles: none may run code.

test_unpickling.py covers ordinary ``__reduce__`` attacks made with
``pickle.dumps``; this corpus adds hand-made opcode sequences (GLOBAL,
STACK_GLOBAL, INST, OBJ, EXT1/2/4, BUILD), a broad list of dangerous
globals, malformed and oversized data, and stack and memo abuse.

Every payload that could run code would create a marker file; the
``marker`` fixture checks it never appears.
"""
import copyreg
import pickle
import struct
import subprocess
import sys
import time
from pathlib import PurePath

import amqp
import pytest

from zamqp import serializers
from zamqp.exceptions import MessageRefused
from zamqp.tests import fuzzmessages
from zamqp.tests.fuzzmessages import Sneaky
from zamqp.tests.fuzzmessages import Touching
from zamqp.exceptions import UnpicklingRefused
from zamqp.unpickling import AllowRules
from zamqp.unpickling import loads
from zamqp.unpickling import rule_for

NOTHING = AllowRules()
CONTENT_TYPE = 'application/x-python-serialize'


# -- helpers ---------------------------------------------------------------

@pytest.fixture
def marker(tmp_path):
    path = tmp_path / 'marker'
    yield path
    assert not path.exists(), 'a pickle ran code'


def decode(body, rules=NOTHING):
    """Decode ``body`` as a consumer would: any failure is MessageRefused."""
    decoder = serializers.Decoder(['pickle'], rules)
    return decoder(amqp.Message(body, content_type=CONTENT_TYPE))


def _str0(text):
    """A protocol 0 text argument (``V`` raw-unicode-escape line)."""
    return b'V' + text.encode('raw-unicode-escape') + b'\n'


def _ustr(text):
    """A binary unicode argument (SHORT_BINUNICODE or BINUNICODE)."""
    data = text.encode()
    if len(data) < 256:
        return b'\x8c' + bytes([len(data)]) + data
    return b'X' + struct.pack('<I', len(data)) + data


def _global(module, name):
    return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def call_global0(module, name, arg):
    """Protocol 0: GLOBAL, MARK, arg, TUPLE, REDUCE."""
    return _global(module, name) + b'(' + _str0(arg) + b'tR.'


def call_global2(module, name, arg):
    """Protocol 2: PROTO 2, GLOBAL, BINUNICODE arg, TUPLE1, REDUCE."""
    data = arg.encode()
    return (b'\x80\x02' + _global(module, name)
            + b'X' + struct.pack('<I', len(data)) + data + b'\x85R.')


def call_stack_global(module, name, arg, protocol=4):
    """Protocol 4/5: STACK_GLOBAL from two strings, TUPLE1, REDUCE."""
    return (bytes([0x80, protocol]) + _ustr(module) + _ustr(name)
            + b'\x93' + _ustr(arg) + b'\x85R.')


def inst(module, name, arg):
    """Protocol 0 INST: MARK, args, ``i module\\nname\\n``."""
    return b'(' + _str0(arg) + b'i' + module.encode() + b'\n' \
        + name.encode() + b'\n.'


def obj(module, name, arg):
    """Protocol 1 OBJ: MARK, class, args, ``o``."""
    return b'(' + _global(module, name) + _str0(arg) + b'o.'


ENCODINGS = {
    'GLOBAL-p0': call_global0,
    'GLOBAL-p2': call_global2,
    'STACK_GLOBAL-p4': lambda m, n, a: call_stack_global(m, n, a, 4),
    'STACK_GLOBAL-p5': lambda m, n, a: call_stack_global(m, n, a, 5),
    'INST': inst,
    'OBJ': obj,
}


# -- code execution through named globals ----------------------------------

def attacks(marker):
    """(module, name, argument) whose call would create ``marker``."""
    shell = f'touch {marker}'
    code = f'open({str(marker)!r}, "w").close()'
    return {
        'posix.system': ('posix', 'system', shell),
        'nt.system': ('nt', 'system', shell),
        'os.system': ('os', 'system', shell),
        'os.popen': ('os', 'popen', shell),
        'os.execv': ('os', 'execv', '/bin/touch'),
        'os.spawnlp': ('os', 'spawnlp', 'touch'),
        'os.posix_spawn': ('os', 'posix_spawn', '/bin/touch'),
        'subprocess.Popen': ('subprocess', 'Popen', shell),
        'subprocess.check_output': ('subprocess', 'check_output', shell),
        'subprocess.run': ('subprocess', 'run', shell),
        'subprocess.getoutput': ('subprocess', 'getoutput', shell),
        'builtins.eval': ('builtins', 'eval', code),
        'builtins.exec': ('builtins', 'exec', code),
        'builtins.compile': ('builtins', 'compile', code),
        'builtins.__import__': ('builtins', '__import__', 'antigravity'),
        'builtins.getattr': ('builtins', 'getattr', 'x'),
        'builtins.setattr': ('builtins', 'setattr', 'x'),
        'builtins.open': ('builtins', 'open', str(marker)),
        'builtins.breakpoint': ('builtins', 'breakpoint', 'x'),
        '__builtin__.eval (py2 name)': ('__builtin__', 'eval', code),
        '__builtin__.file (py2 name)': ('__builtin__', 'file', str(marker)),
        'importlib.import_module':
            ('importlib', 'import_module', 'antigravity'),
        'code.InteractiveInterpreter':
            ('code', 'InteractiveInterpreter', code),
        'code.interact': ('code', 'interact', code),
        'pdb.run': ('pdb', 'run', code),
        'timeit.timeit': ('timeit', 'timeit', code),
        'pydoc.pipepager': ('pydoc', 'pipepager', shell),
        'pydoc.locate': ('pydoc', 'locate', 'os.system'),
        'runpy._run_code': ('runpy', '_run_code', code),
        'runpy.run_path': ('runpy', 'run_path', str(marker)),
        'ctypes.CDLL': ('ctypes', 'CDLL', 'libc.so.6'),
        'ctypes.cdll (attr path)': ('ctypes', 'cdll.LoadLibrary', 'libc.so.6'),
        'shutil.rmtree': ('shutil', 'rmtree', str(marker.parent)),
        'pickle.loads': ('pickle', 'loads', 'x'),
        '_pickle.loads': ('_pickle', 'loads', 'x'),
        'marshal.loads': ('marshal', 'loads', 'x'),
        'types.FunctionType': ('types', 'FunctionType', 'x'),
        'copyreg._reconstructor': ('copyreg', '_reconstructor', 'x'),
        'functools.partial': ('functools', 'partial', 'x'),
        'operator.attrgetter': ('operator', 'attrgetter', 'system'),
        'operator.methodcaller': ('operator', 'methodcaller', 'system'),
        'operator.itemgetter': ('operator', 'itemgetter', 'x'),
    }


@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
@pytest.mark.parametrize('name', sorted(attacks(PurePath('/x/marker'))))
def test_dangerous_global_is_refused(name, encoding, marker):
    module, attr, arg = attacks(marker)[name]
    payload = ENCODINGS[encoding](module, attr, arg)
    with pytest.raises(UnpicklingRefused, match='allow='):
        loads(payload, NOTHING)
    with pytest.raises(MessageRefused):
        decode(payload)


def test_nested_pickle_and_partial_chains_are_refused(marker):
    # functools.partial(os.system, cmd)() and a nested pickle.loads of an
    # os.system pickle: the outermost global is refused first.
    inner = call_global0('posix', 'system', f'touch {marker}')
    payloads = [
        _global('functools', 'partial') + b'(' + _global('posix', 'system')
        + _str0(f'touch {marker}') + b'tR)R.',
        b'\x80\x02' + _global('pickle', 'loads') + b'C'
        + bytes([len(inner)]) + inner + b'\x85R.',
        b'\x80\x02' + _global('_pickle', 'loads') + b'C'
        + bytes([len(inner)]) + inner + b'\x85R.',
        # operator.methodcaller('system', cmd)(os)
        _global('operator', 'methodcaller') + b'(' + _str0('system')
        + _str0(f'touch {marker}') + b'tR(' + _global('os', 'path')
        + b'tR.',
        # marshal.loads(code) wrapped in types.FunctionType(code, {})
        _global('types', 'FunctionType') + b'(' + _global('marshal', 'loads')
        + b'(' + _str0('x') + b'tR(dtR)R.',
        # copyreg._reconstructor(cls, base=os-something, state)
        _global('copyreg', '_reconstructor') + b'('
        + _global('builtins', 'dict')
        + _global('subprocess', 'Popen') + _str0(f'touch {marker}') + b'tR.',
    ]
    for payload in payloads:
        with pytest.raises(UnpicklingRefused):
            loads(payload, NOTHING)


# -- the extension registry (EXT1, EXT2, EXT4) -----------------------------

@pytest.mark.parametrize('opcode, code, fmt', [
    (b'\x82', 0xF1, '<B'), (b'\x83', 0xF123, '<H'), (b'\x84', 0x7ABCDE, '<i'),
])
def test_extension_codes_are_checked_like_globals(opcode, code, fmt, marker):
    module = 'posix' if sys.platform != 'win32' else 'nt'
    copyreg.add_extension(module, 'system', code)
    try:
        payload = (b'\x80\x02' + opcode + struct.pack(fmt, code)
                   + b'X' + struct.pack('<I', len(f'touch {marker}'))
                   + f'touch {marker}'.encode() + b'\x85R.')
        with pytest.raises(UnpicklingRefused, match='system'):
            loads(payload, NOTHING)
    finally:
        copyreg.remove_extension(module, 'system', code)
    assert (module, 'system') not in copyreg._extension_registry


def test_unregistered_extension_code_is_a_clean_error():
    with pytest.raises(MessageRefused):
        decode(b'\x80\x02\x82\xf7.')


# -- BUILD on allowed classes ----------------------------------------------

def test_build_state_cannot_change_class_or_reduce(marker):
    # OrderedDict() then BUILD with a dict state naming dunders: the
    # state lands in the instance __dict__, the class and its methods
    # stay those of OrderedDict.
    state = (b'}(' + _ustr('__class__') + _ustr('posix.system')
             + _ustr('__reduce__') + _ustr(f'touch {marker}')
             + _ustr('__setstate__') + _ustr('x') + b'u')
    payload = (b'\x80\x02' + _global('collections', 'OrderedDict')
               + b')R' + state + b'b.')
    value = decode(payload)
    assert type(value).__name__ == 'OrderedDict'
    assert type(value).__module__ == 'collections'
    assert value.__dict__['__class__'] == 'posix.system'
    # The string shadows __reduce__ on the instance: re-pickling the
    # value fails with a TypeError, it does not call anything.
    with pytest.raises(TypeError, match='not callable'):
        pickle.dumps(value)


@pytest.mark.parametrize('klass', [
    ('builtins', 'dict'), ('collections', 'Counter'),
    ('subprocess', 'Popen'),
])
def test_build_slot_state_cannot_swap_class(klass, marker):
    # (None, {'__class__': X}) makes BUILD call setattr(obj, '__class__',
    # X): X must itself be allowed, and even then the swap fails or is
    # harmless.
    state = (b'N}' + _ustr('__class__') + _global(*klass) + b's\x86')
    payload = (b'\x80\x02' + _global('collections', 'OrderedDict')
               + b')R' + state + b'b.')
    try:
        value = decode(payload)
    except MessageRefused:
        return
    assert type(value).__module__ in ('collections', 'builtins')


def test_build_on_datetime_is_clean(marker):
    state = b'}' + _ustr('__reduce__') + _ustr(f'touch {marker}') + b's'
    payload = (b'\x80\x02' + _global('datetime', 'timedelta')
               + b'K\x01\x85R' + state + b'b.')
    with pytest.raises(MessageRefused):
        decode(payload)


# -- classes of this module with side effects ------------------------------

def test_setstate_side_effect_refused_unless_allowed(marker, tmp_path):
    payload = pickle.dumps(Touching(str(marker)), 2)
    with pytest.raises(UnpicklingRefused, match='Touching'):
        loads(payload, NOTHING)
    # Allowing a class trusts its __setstate__: once allowed by its exact
    # name, unpickling runs it (here it creates a file). Allow only
    # classes whose __setstate__ you would run on attacker data.
    trusted = tmp_path / 'trusted'
    loads(pickle.dumps(Touching(str(trusted)), 2),
          AllowRules.from_spec([Touching]))
    assert trusted.exists()


def test_reduce_side_effect_refused_even_when_class_allowed(marker):
    payload = pickle.dumps(Sneaky(str(marker)), 2)
    module = fuzzmessages.__name__
    for rules in (NOTHING, AllowRules.from_spec([Sneaky]),
                  AllowRules.from_spec([f'{module}.*'])):
        # The pickle names ``touch``, not Sneaky: allowing the class (or
        # a pattern, which only allows classes) does not allow it.
        with pytest.raises(UnpicklingRefused, match='touch'):
            loads(payload, rules)


# -- dunder traversal ------------------------------------------------------

DUNDER_NAMES = [
    ('builtins', 'object.__subclasses__'),
    ('builtins', 'type.__subclasses__'),
    ('builtins', 'dict.__class__'),
    ('collections', 'OrderedDict.__init__.__globals__'),
    ('collections', 'OrderedDict.__class__'),
    ('collections', 'OrderedDict.__reduce__'),
    ('collections', '__builtins__'),
    ('datetime', 'datetime.__init_subclass__'),
]

#: Not dunders, but not classes either: a pattern (which allows only
#: classes) refuses them, or the lookup fails (protocol 0 has no dotted
#: lookup).
NON_CLASS_NAMES = [
    ('collections', '_sys.modules'),
    ('collections', 'OrderedDict.fromkeys'),
    ('collections', '_sys'),
    ('collections', '_collections_abc'),
    ('datetime', 'sys'),
]
PATTERNS = AllowRules.from_spec(
    ['collections.*', 'builtins.*', 'datetime.*', 'collections.OrderedDict'])


@pytest.mark.parametrize('encoding', ['GLOBAL-p0', 'STACK_GLOBAL-p4'])
@pytest.mark.parametrize('module, name', DUNDER_NAMES)
def test_dunder_traversal_is_refused(module, name, encoding, marker):
    assert not PATTERNS.allows(module, name)
    payload = ENCODINGS[encoding](module, name, 'x')
    with pytest.raises(UnpicklingRefused):
        loads(payload, PATTERNS)


@pytest.mark.parametrize('encoding', ['GLOBAL-p0', 'STACK_GLOBAL-p4'])
@pytest.mark.parametrize('module, name', NON_CLASS_NAMES)
def test_non_class_attributes_are_refused(module, name, encoding, marker):
    payload = ENCODINGS[encoding](module, name, 'x')
    with pytest.raises(MessageRefused):
        decode(payload, PATTERNS)


# -- malformed, oversized and abusive data ---------------------------------

OVERSIZED = [
    b'\x80\x04\x8e' + struct.pack('<Q', 2 ** 62) + b'abc.',     # BINBYTES8
    b'\x80\x04\x8e' + struct.pack('<Q', 2 ** 64 - 1) + b'abc.',
    b'\x80\x04\x8d' + struct.pack('<Q', 2 ** 62) + b'abc.',     # BINUNICODE8
    b'\x80\x05\x96' + struct.pack('<Q', 2 ** 62) + b'abc.',     # BYTEARRAY8
    b'\x80\x02B' + struct.pack('<I', 2 ** 31 + 5) + b'abc.',    # BINBYTES
    b'\x80\x02X' + struct.pack('<I', 2 ** 32 - 1) + b'abc.',    # BINUNICODE
    b'\x80\x04\x95' + struct.pack('<Q', 2 ** 62) + b'N.',      # FRAME
    b'\x80\x02\x8b' + struct.pack('<i', 2 ** 31 - 1) + b'\x01.',  # LONG4
]


@pytest.mark.parametrize('payload', OVERSIZED, ids=[
    'BINBYTES8', 'BINBYTES8-max', 'BINUNICODE8', 'BYTEARRAY8', 'BINBYTES',
    'BINUNICODE', 'FRAME', 'LONG4'])
def test_oversized_length_fails_fast(payload):
    """A length header claiming gigabytes in a body of a few bytes: the
    unpickler may reserve that much address space for a moment, but
    touches none of it (the resident set does not grow)."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(MessageRefused):
        decode(payload)
    assert time.monotonic() - started < 1.0
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown < 64 * 1024, f'resident set grew by {grown} KiB'


@pytest.mark.parametrize('payload', [
    b'cbuiltins\nint\n(cdecimal\nDecimal\n(V1E+100000000\ntRtR.',
    b'cbuiltins\nint\n(cdecimal\nDecimal\n(V-1E+100000000\ntRtR.',
    b'cfractions\nFraction\n(cdecimal\nDecimal\n(V1E+100000000\ntRtR.',
    b'cfractions\nFraction\n(cdecimal\nDecimal\n(V1E-100000000\ntRtR.',
    b'cfractions\nFraction\n(V1e100000000\ntR.',
    b'cfractions\nFraction\n(V3/4\nV1e100000000\ntR.',
], ids=['int-Decimal', 'int-negative', 'Fraction-Decimal',
        'Fraction-tiny-Decimal', 'Fraction-text', 'Fraction-two'])
def test_huge_numbers_from_tiny_pickles_fail_fast(payload):
    """A few bytes naming only safe globals would make int() or Fraction()
    compute a hundred-million-digit number (minutes of CPU, holding the
    GIL): refused before computing."""
    started = time.monotonic()
    with pytest.raises(UnpicklingRefused, match='4300 digits'):
        decode(payload)
    assert time.monotonic() - started < 1.0


NESTED = {'a': [1, 2.5, {'b': ('c', b'd', None)}], 'e': {'f': {'g': [True]}},
          'h': 'x' * 300}


@pytest.mark.parametrize('protocol', range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_truncation_fails_cleanly(protocol):
    whole = pickle.dumps(NESTED, protocol)
    assert decode(whole) == NESTED
    started = time.monotonic()
    for length in range(len(whole)):
        with pytest.raises(MessageRefused):
            decode(whole[:length])
    assert time.monotonic() - started < 5.0


ABUSE = [
    b'\x80\x02h\x05.',                                   # BINGET missing
    b'\x80\x02j\xff\xff\xff\xff.',                       # LONG_BINGET huge
    b'g99999999999999999999\n.',                         # GET huge
    b'\x80\x02r\xff\xff\xff\xff.',                       # LONG_BINPUT, empty
    b'\x80\x04\x94.',                                    # MEMOIZE, empty
    b'.',                                                # STOP, empty stack
    b'1.',                                               # POP_MARK, no mark
    b'(.',                                               # MARK left open
    b'0.',                                               # POP, empty
    b'2.',                                               # DUP, empty
    b'a.',                                               # APPEND, empty
    b'}s.',                                              # SETITEM, short
    b'N\x85.'[:1] + b'R.',                               # REDUCE, short
    b'\x80\x02Nb.',                                      # BUILD, no object
    b'\x80\x09N.',                                       # unknown protocol
    b'\xff.',                                            # unknown opcode
    b'I12x\n.',                                          # bad INT
    b'F1e99999\n.',                                      # FLOAT overflow
    b'S\'unterminated\n.',                               # bad STRING
    b'\x80\x02\x93.',                                    # STACK_GLOBAL empty
    b'\x80\x02NN\x93.',                                  # non-str names
]


@pytest.mark.parametrize('payload', ABUSE, ids=lambda p: repr(p)[:30])
def test_memo_and_stack_abuse_fail_cleanly(payload):
    with pytest.raises(MessageRefused, match='cannot decode pickle'):
        decode(payload)


def test_deep_nesting_does_not_crash_the_interpreter():
    depth = 100000
    script = (
        'import sys, amqp\n'
        'from zamqp import serializers\n'
        'from zamqp.unpickling import AllowRules\n'
        'from zamqp.exceptions import MessageRefused\n'
        f'body = b"(" * {depth} + b"l" * {depth} + b"."\n'
        f'body2 = (b"\\x80\\x02" + b"]" * {depth}'
        f' + b"a" * ({depth} - 1) + b".")\n'
        'decoder = serializers.Decoder(["pickle"], AllowRules())\n'
        'for b in (body, body2):\n'
        '    try:\n'
        '        value = decoder(amqp.Message(b, content_type='
        f'{CONTENT_TYPE!r}))\n'
        '    except MessageRefused:\n'
        '        pass\n'
        '    else:\n'
        '        assert isinstance(value, list)\n'
        '        del value\n'
        'print("ok")\n')
    done = subprocess.run([sys.executable, '-c', script],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == 'ok'


# -- an unsafe-import list of our own, in the spirit of pickle scanners ----

UNSAFE = [
    ('os', n) for n in ('system', 'popen', 'execv', 'execve', 'execl',
                        'execvp', 'spawnv', 'spawnl', 'spawnlp', 'fork',
                        'kill', 'remove', 'unlink', 'rmdir', 'rename',
                        'putenv', 'chmod', 'open', 'startfile', 'posix_spawn')
] + [
    ('posix', 'system'), ('posix', 'popen'), ('posix', 'execv'),
    ('nt', 'system'), ('nt', 'startfile'),
    ('subprocess', 'Popen'), ('subprocess', 'call'), ('subprocess', 'run'),
    ('subprocess', 'check_call'), ('subprocess', 'check_output'),
    ('subprocess', 'getoutput'), ('subprocess', 'getstatusoutput'),
    ('sys', 'exit'), ('sys', 'modules'), ('sys', 'settrace'),
    ('sys', 'setprofile'),
    ('builtins', 'eval'), ('builtins', 'exec'), ('builtins', 'compile'),
    ('builtins', '__import__'), ('builtins', 'getattr'),
    ('builtins', 'setattr'), ('builtins', 'delattr'), ('builtins', 'open'),
    ('builtins', 'breakpoint'), ('builtins', 'globals'),
    ('builtins', 'locals'), ('builtins', 'vars'), ('builtins', 'input'),
    ('builtins', 'help'), ('builtins', 'exit'), ('builtins', 'quit'),
    ('builtins', 'memoryview'), ('builtins', 'type'), ('builtins', 'object'),
    ('builtins', 'super'), ('builtins', 'classmethod'),
    ('socket', 'socket'), ('socket', 'create_connection'),
    ('socket', 'create_server'),
    ('shutil', 'rmtree'), ('shutil', 'move'), ('shutil', 'copy'),
    ('shutil', 'copyfile'),
    ('pty', 'spawn'), ('pty', 'fork'),
    ('ctypes', 'CDLL'), ('ctypes', 'cdll'), ('ctypes', 'pythonapi'),
    ('ctypes', 'memmove'), ('ctypes', 'string_at'),
    ('importlib', 'import_module'), ('importlib', '__import__'),
    ('importlib', 'reload'), ('importlib.util', 'spec_from_file_location'),
    ('runpy', 'run_module'), ('runpy', 'run_path'), ('runpy', '_run_code'),
    ('code', 'interact'), ('code', 'InteractiveInterpreter'),
    ('code', 'InteractiveConsole'), ('codeop', 'compile_command'),
    ('pdb', 'run'), ('pdb', 'runcall'), ('pdb', 'set_trace'),
    ('pdb', 'Pdb'), ('bdb', 'Bdb'),
    ('timeit', 'timeit'), ('timeit', 'repeat'), ('timeit', 'Timer'),
    ('pydoc', 'pipepager'), ('pydoc', 'locate'), ('pydoc', 'pager'),
    ('webbrowser', 'open'), ('webbrowser', 'open_new'),
    ('antigravity', 'fly'), ('this', 's'), ('turtle', 'Turtle'),
    ('asyncio', 'create_subprocess_exec'),
    ('asyncio', 'create_subprocess_shell'),
    ('asyncio.subprocess', 'create_subprocess_shell'),
    ('asyncio.unix_events', '_UnixSelectorEventLoop'),
    ('multiprocessing', 'Process'), ('multiprocessing', 'Pool'),
    ('multiprocessing.popen_fork', 'Popen'),
    ('multiprocessing.util', 'spawnv_passfds'),
    ('_posixsubprocess', 'fork_exec'),
    ('marshal', 'loads'), ('types', 'FunctionType'), ('types', 'CodeType'),
    ('types', 'LambdaType'), ('types', 'ModuleType'),
    ('pickle', 'loads'), ('pickle', 'load'), ('pickle', 'Unpickler'),
    ('_pickle', 'loads'), ('_pickle', 'Unpickler'),
    ('copyreg', '_reconstructor'), ('copyreg', '__newobj__'),
    ('functools', 'partial'), ('functools', 'reduce'),
    ('operator', 'attrgetter'), ('operator', 'methodcaller'),
    ('operator', 'itemgetter'), ('operator', 'getitem'),
    ('itertools', 'starmap'), ('inspect', 'getsource'),
    ('io', 'open'), ('io', 'FileIO'), ('_io', 'open'), ('pathlib', 'Path'),
    ('tempfile', 'NamedTemporaryFile'), ('glob', 'glob'),
    ('urllib.request', 'urlopen'), ('http.client', 'HTTPConnection'),
    ('smtplib', 'SMTP'), ('ftplib', 'FTP'), ('telnetlib', 'Telnet'),
    ('signal', 'signal'), ('resource', 'setrlimit'), ('gc', 'get_objects'),
    ('dill', 'loads'), ('dill._dill', '_create_function'),
    ('cloudpickle', 'loads'), ('joblib', 'load'), ('numpy', 'load'),
    ('numpy.core.multiarray', '_reconstruct'), ('torch', 'load'),
    ('torch.serialization', '_load'), ('torch._utils', '_rebuild_tensor'),
    ('yaml', 'load'), ('jinja2', 'Template'), ('zipimport', 'zipimporter'),
    ('sqlite3', 'connect'), ('venv', 'create'), ('ensurepip', 'bootstrap'),
    ('distutils.spawn', 'spawn'), ('setuptools', 'setup'),
    ('zamqp.unpickling', 'loads'), ('zamqp.unpickling', 'SAFE_GLOBALS'),
]

NOT_USUALLY_IMPORTED = {'pty', 'webbrowser', 'antigravity', 'this', 'turtle',
                        'telnetlib', 'ftplib', 'smtplib', 'pdb', 'timeit',
                        'pydoc', 'runpy', 'code', 'ensurepip', 'venv'}


@pytest.mark.parametrize('module, name', UNSAFE,
                         ids=[f'{m}.{n}' for m, n in UNSAFE])
def test_unsafe_import_list_is_refused_without_importing(module, name):
    assert not AllowRules().allows(module, name)
    imported_before = module in sys.modules
    with pytest.raises(UnpicklingRefused, match='allow='):
        loads(call_global0(module, name, 'x'), NOTHING)
    with pytest.raises(UnpicklingRefused, match='allow='):
        loads(call_stack_global(module, name, 'x'), NOTHING)
    if not imported_before:
        assert module not in sys.modules


def test_some_refused_modules_really_were_absent():
    # Guards the check above: at least a few of these modules are absent
    # from a fresh test process, so "not imported" was really tested.
    script = ('import sys, zamqp.unpickling, zamqp.serializers\n'
              f'print(sorted(m for m in {sorted(NOT_USUALLY_IMPORTED)!r} '
              'if m in sys.modules))')
    done = subprocess.run([sys.executable, '-c', script],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[]'


def test_unsafe_names_stay_refused_in_a_fresh_process(tmp_path):
    marker = tmp_path / 'marker'
    script = (
        'import sys\n'
        'from zamqp.unpickling import AllowRules, loads\n'
        'from zamqp.exceptions import UnpicklingRefused\n'
        f'mods = {sorted(NOT_USUALLY_IMPORTED)!r}\n'
        'for m in mods:\n'
        f'    body = b"c" + m.encode() + b"\\nanything\\n(V{marker}\\ntR."\n'
        '    try:\n'
        '        loads(body, AllowRules())\n'
        '    except UnpicklingRefused:\n'
        '        pass\n'
        '    else:\n'
        '        raise SystemExit("loaded " + m)\n'
        'print(sorted(m for m in mods if m in sys.modules))\n')
    done = subprocess.run([sys.executable, '-c', script],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[]'
    assert not marker.exists()


def test_rule_for_names_the_fixture_module():
    # The allow tests above depend on the fixture classes being named by
    # their importable dotted name.
    assert rule_for(Touching) == f'{fuzzmessages.__name__}.Touching'


# -- through a running consumer --------------------------------------------

def test_corpus_through_a_consumer(make_props, admin, start, marker, caplog):
    """Every attack in every encoding, the oversized and abusive pickles
    and truncated ones, published to one consumer on the real broker:
    each is refused with a log line naming its message id and the reason,
    dead-lettered, nothing runs, and the consumer goes on."""
    from zamqp import AMQPConsumer
    from zamqp.testhelpers import unique
    from zamqp.testhelpers import wait_for

    props = make_props()
    queue, dead = unique('corpus'), f'{props.exchange}.dead'
    payloads = [encode(*attack) for attack in attacks(marker).values()
                for encode in ENCODINGS.values()]
    payloads += OVERSIZED + ABUSE
    whole = pickle.dumps(NESTED, 4)
    payloads += [whole[:n] for n in range(0, len(whole), 7)]
    got = []
    start(AMQPConsumer(queue, props, got.append, shared=True))
    try:
        with caplog.at_level('ERROR', 'zamqp'):
            for n, payload in enumerate(payloads):
                admin.channel.basic_publish(amqp.Message(
                    payload, content_type=CONTENT_TYPE,
                    message_id=f'attack-{n}'), props.exchange, queue)
            admin.channel.basic_publish(amqp.Message(
                whole, content_type=CONTENT_TYPE, message_id='valid'),
                props.exchange, queue)
            assert wait_for(lambda: got == [NESTED], timeout=20)
            assert wait_for(
                lambda: admin.queue_depth(dead) == len(payloads), timeout=20)
        refused = {r.getMessage().partition('refused message ')[2]
                   .split()[0]: r.getMessage() for r in caplog.records
                   if 'refused message' in r.getMessage()}
        assert sorted(refused) == sorted(f'attack-{n}'
                                         for n in range(len(payloads)))
        for line in refused.values():
            assert 'dead-lettered' in line
            assert 'allow=' in line or 'cannot decode pickle' in line
    finally:
        admin.delete_queue(queue)


# -- the modules a public pickle scanner flags ------------------------------

#: Modules that fickling (trailofbits/fickling, ``UNSAFE_IMPORTS``, read in
#: November 2026) reports as unsafe in a pickle, in our own order. The
#: default rules must refuse every name in each of them, except the value
#: types zamqp documents as safe (see SCANNER_EXCEPTIONS).
SCANNER_MODULES = sorted({
    'builtins', '__builtin__', '__builtins__', 'os', 'posix', 'nt', 'sys',
    'subprocess', '_posixsubprocess', 'pty', 'commands', 'multiprocessing',
    'code', 'codeop', 'runpy', 'marshal', 'types', 'compile', 'exec', 'eval',
    'doctest', '_interpreters', '_xxsubinterpreters', 'importlib',
    '_frozen_importlib', '_frozen_importlib_external', '_imp', 'imp',
    'pkgutil', 'zipimport', 'gc', 'site', 'unittest', 'inspect', 'test',
    'operator', '_operator', 'functools', 'cProfile', 'profile', 'pdb',
    'bdb', 'timeit', 'trace', 'socket', 'ssl', 'http', 'httplib', 'urllib',
    'urllib2', 'requests', 'aiohttp', 'asyncio', 'webbrowser', 'smtplib',
    'imaplib', 'ftplib', 'poplib', 'telnetlib', 'nntplib', 'ctypes',
    '_ctypes', 'pickle', '_pickle', 'dill', 'cloudpickle', 'joblib',
    'shutil', 'tempfile', 'filecmp', 'distutils', 'pydoc', 'pexpect',
    'pipes', 'venv', 'ensurepip', 'pip', 'idlelib', 'lib2to3',
    'socketserver', 'xmlrpc', 'signal', '_signal', 'threading', '_thread',
    'atexit', 'sqlite3', '_sqlite3', 'fileinput', 'glob', 'platform',
    'linecache', 'difflib', 'compileall', 'py_compile', 'mmap', 'select',
    'selectors', 'logging', 'syslog', 'tarfile', 'zipfile', 'shelve',
    'uuid', '_osx_support', '_aix_support',
})

#: What zamqp allows from those modules by default, and why it is safe:
#: value types whose construction and ``__setstate__`` do no I/O and run
#: no code (bytes and bytearray through stand-ins that refuse a size).
SCANNER_EXCEPTIONS = {
    ('builtins', n) for n in ('bool', 'int', 'float', 'complex', 'str',
                              'bytes', 'bytearray', 'list', 'tuple', 'dict',
                              'set', 'frozenset', 'slice')
} | {('uuid', 'UUID')}


def _public_and_private_names(module):
    """Every attribute name of ``module`` if it imports here (quietly), or
    a few names it is known for."""
    import importlib
    import warnings
    if module in sys.modules:
        found = sys.modules[module]
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                found = importlib.import_module(module)
        except Exception:
            found = None
    names = set(dir(found)) if found is not None else set()
    return names | {'system', 'Popen', 'loads', 'load', 'run', 'open',
                    'main', '__import__', '__builtins__', '__dict__'}


@pytest.mark.parametrize('module', SCANNER_MODULES)
def test_scanner_modules_are_refused_by_default(module):
    rules = AllowRules()
    allowed = {(module, name) for name in _public_and_private_names(module)
               if rules.allows(module, name)}
    assert allowed <= SCANNER_EXCEPTIONS, sorted(allowed)
    # and a pattern an application might write cannot reach them either
    app = AllowRules.from_spec(['myapp.*', 'zamqp.tests.eventtypes.*'])
    assert not any(app.allows(module, name)
                   for name in _public_and_private_names(module)
                   if (module, name) not in SCANNER_EXCEPTIONS)


def test_uuid_helpers_that_run_commands_are_refused(marker):
    """fickling flags all of ``uuid``; zamqp allows only the UUID class:
    the module's command-running helpers stay refused."""
    for name in ('_get_command_stdout', '_popen', '_ifconfig_getnode',
                 '_find_mac_near_keyword', 'getnode'):
        for encode in ENCODINGS.values():
            with pytest.raises(MessageRefused):
                decode(encode('uuid', name, f'touch {marker}'))
